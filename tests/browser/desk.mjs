// SPDX-License-Identifier: GPL-3.0-or-later
// The review desk in headless chromium, driven by playwright-core; started by
// tests/desk_browser.rs, which runs the daemon and seeds the store. Every step asserts;
// the first failure is printed with its step, a screenshot of the page is saved as
// failure.png, and the script exits 1.
//
// Environment: DESK_URL (http://127.0.0.1:PORT), DESK_REVIEWER, DESK_REVIEWER_PASSWORD,
// DESK_VIEWER, DESK_VIEWER_PASSWORD, DESK_ADMIN, DESK_ADMIN_PASSWORD, DESK_FIXTURE
// (JSON: the queue ids big, hostile, small, storm), DESK_SCREENSHOTS (a directory),
// CHROMIUM (the executable).

import { check, env, equal, launch, login, reportFailure, step, submitWith } from './harness.mjs';
import http from 'node:http';
import path from 'node:path';

const DESK = env('DESK_URL').replace(/\/$/, '');
const REVIEWER = env('DESK_REVIEWER');
const REVIEWER_PASSWORD = env('DESK_REVIEWER_PASSWORD');
const VIEWER = env('DESK_VIEWER');
const VIEWER_PASSWORD = env('DESK_VIEWER_PASSWORD');
const ADMIN = env('DESK_ADMIN');
const ADMIN_PASSWORD = env('DESK_ADMIN_PASSWORD');
const IDS = JSON.parse(env('DESK_FIXTURE'));
const SHOTS = env('DESK_SCREENSHOTS');
const CHROMIUM = env('CHROMIUM');


// The held list's rows (queue ids, in order).
async function rowIds(page) {
  return page.locator('#held tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.queueId));
}

// The brake banner's text, with the background colour it is shown in.
async function banner(page) {
  const b = page.locator('#brake');
  equal(await b.count(), 1, `the brake banner on ${new URL(page.url()).pathname}`);
  check(await b.isVisible(), 'the brake banner is visible');
  const colour = await b.evaluate((e) => getComputedStyle(e).backgroundColor);
  const [r, g, bl] = colour.match(/\d+/g).map(Number);
  check(r > 150 && g < 60 && bl < 60, `the banner is red: ${colour}`);
  return b.textContent();
}

// A page on another origin whose form auto-submits a release to the desk.
function forgeryServer() {
  return new Promise((resolve) => {
    const server = http.createServer((req, res) => {
      const target = `${DESK}/message/${IDS.big}`;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!DOCTYPE html><title>You won a prize</title>
<form id="f" method="post" action="${target}">
<input type="hidden" name="action" value="release">
<input type="hidden" name="comment" value="forged">
</form>
<script>document.getElementById('f').submit();</script>`);
    });
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

const { browser, context } = await launch(CHROMIUM, 1280);
const page = await context.newPage();
const evil = await forgeryServer();
let failed = false;

try {
  await step('an anonymous visitor is sent to the login form', async () => {
    const r = await page.goto(`${DESK}/`);
    equal(new URL(page.url()).pathname, '/login', 'the page after GET /');
    equal(r.status(), 200, 'the login form status');
    const csp = r.headers()['content-security-policy'] || '';
    check(csp.includes("default-src 'none'") && csp.includes("form-action 'self'"), `CSP header: ${csp}`);
  });

  await step('a wrong password shows the error', async () => {
    const r = await login(page, DESK, REVIEWER, 'not-the-password');
    equal(r.status(), 401, 'status of a wrong password');
    const error = await page.locator('#login-error').textContent();
    check(/wrong user name or password/i.test(error), `the error shown: ${error}`);
    equal(await page.locator('#who').count(), 0, 'nobody is signed in');
  });

  await step('the reviewer logs in and sees the counts and rows', async () => {
    const r = await login(page, DESK, REVIEWER, REVIEWER_PASSWORD);
    equal(r.status(), 303, 'status of the login POST');
    equal(new URL(page.url()).pathname, '/', 'the page after login');
    const who = await page.locator('#who').textContent();
    check(who.includes(REVIEWER) && who.includes('reviewer'), `the signed-in user: ${who}`);
    const held = await page.locator('#counts a[data-state=held]').textContent();
    equal(held.trim(), 'held: 4', 'the held count');
    check((await page.locator('#total').textContent()).includes('4 matching'), 'the total line');
    const ids = await rowIds(page);
    equal(ids.length, 4, 'rows on the list');
    for (const id of Object.values(IDS)) check(ids.includes(id), `row ${id} is listed`);
    const big = await page.locator(`#held tr[data-queue-id="${IDS.big}"]`).textContent();
    check(big.includes('840,000'), `the big message's audience: ${big}`);
    check(big.includes('all-staff@example.org'), `the big message's largest list: ${big}`);
    const storm = await page.locator(`#held tr[data-queue-id="${IDS.storm}"] .tag.admin`).count();
    equal(storm, 1, 'the storm hold is marked admin-only');
    equal(await page.locator('#held script, script').count(), 0, '<script> elements on the list');
    equal(await page.locator('main b').count(), 0, '<b> elements from mail on the list');
    await page.screenshot({ path: path.join(SHOTS, 'list.png'), fullPage: true });
  });

  await step('filter by sender', async () => {
    await page.fill('#filter input[name=sender]', 'carol');
    await Promise.all([page.waitForURL(/sender=carol/), page.click('#filter button[type=submit]')]);
    equal(JSON.stringify(await rowIds(page)), JSON.stringify([IDS.small]), 'rows for sender carol');
    check((await page.locator('#total').textContent()).includes('1 matching'), 'the total for carol');
    equal(await page.inputValue('#filter input[name=sender]'), 'carol', 'the filter keeps its value');
  });

  await step('filter by minimum audience', async () => {
    await page.fill('#filter input[name=sender]', '');
    await page.fill('#filter input[name=min_audience]', '1000');
    await Promise.all([page.waitForURL(/min_audience=1000/), page.click('#filter button[type=submit]')]);
    const ids = (await rowIds(page)).sort();
    equal(JSON.stringify(ids), JSON.stringify([IDS.big, IDS.storm].sort()), 'rows with audience >= 1000');
    await page.fill('#filter input[name=min_audience]', '100000');
    await Promise.all([page.waitForURL(/min_audience=100000/), page.click('#filter button[type=submit]')]);
    equal(JSON.stringify(await rowIds(page)), JSON.stringify([IDS.big]), 'rows with audience >= 100000');
  });

  await step('a hostile subject, sender and list are shown as text with visible escapes', async () => {
    await page.goto(`${DESK}/`);
    await Promise.all([
      page.waitForURL(new RegExp(`/message/${IDS.hostile}$`)),
      page.click(`#held tr[data-queue-id="${IDS.hostile}"] a[href$="/message/${IDS.hostile}"]`),
    ]);
    equal(await page.locator('#message').getAttribute('data-queue-id'), IDS.hostile, 'the message page opened');
    const subject = await page.locator('#subject').textContent();
    check(subject.includes('<script>alert(1)</script>'), `the subject shows the markup as text: ${subject}`);
    check(subject.includes('\\u{202E}'), `the subject shows U+202E as an escape: ${subject}`);
    equal(await page.locator('#subject .flag').count(), 1, 'the subject is flagged');
    equal(await page.locator('script').count(), 0, '<script> elements on the message page');
    equal(await page.locator('main b').count(), 0, '<b> elements from mail on the message page');
    const body = await page.locator('body').textContent();
    check(!body.includes('\u202E'), 'no raw U+202E anywhere on the page');
    check(body.includes('mallory<b>x</b>\\u{202E}@example.org'), 'the sender is shown as text with its escape');
    const lists = await page.locator('#lists').textContent();
    check(lists.includes('<b>team</b>\\u{202E}@example.org'), `the list name as text: ${lists}`);
    const alerted = [];
    page.on('dialog', (d) => {
      alerted.push(d.message());
      d.dismiss();
    });
    await page.reload();
    equal(alerted.length, 0, 'no script ran (no alert)');
    await page.screenshot({ path: path.join(SHOTS, 'message.png'), fullPage: true });
  });

  // A second tab keeps the message page with its form, as a colleague's would.
  const stale = await context.newPage();
  await stale.goto(`${DESK}/message/${IDS.hostile}`);

  await step('release with a comment: the desk shows the request pending', async () => {
    await page.fill('#act [name=comment]', 'checked with the sender by phone');
    const r = await submitWith(page, '#act button[name=action][value=release]');
    equal(r.status(), 303, 'status of the release POST');
    equal(new URL(page.url()).pathname, `/message/${IDS.hostile}`, 'back on the message page');
    const rows = page.locator('#requests tbody tr');
    equal(await rows.count(), 1, 'requests listed');
    const row = await rows.first().textContent();
    check(row.includes('release') && row.includes(REVIEWER), `the request row: ${row}`);
    check(row.includes('checked with the sender by phone'), `the comment: ${row}`);
    equal((await rows.first().locator('td.state').textContent()).trim(), 'pending', 'the request state');
    equal(await page.locator('#act').count(), 0, 'no second action form while the request is open');
    const audit = await page.locator('#audit tbody tr').last().textContent();
    check(audit.includes(REVIEWER) && audit.includes('release'), `the audit trail names the reviewer: ${audit}`);
    await page.screenshot({ path: path.join(SHOTS, 'message-after-release.png'), fullPage: true });
    await page.goto(`${DESK}/`);
    const cell = await page.locator(`#held tr[data-queue-id="${IDS.hostile}"] .req`).textContent();
    equal(cell.trim(), 'release: pending', 'the list shows the request');
    await page.screenshot({ path: path.join(SHOTS, 'list-after-release.png'), fullPage: true });
  });

  await step('a second release of the same message is refused with 409', async () => {
    await stale.fill('#act [name=comment]', 'me too');
    const r = await submitWith(stale, '#act button[name=action][value=release]');
    equal(r.status(), 409, 'status of the second release');
    check((await stale.locator('#refusal').count()) === 1, 'the refusal page');
    await stale.close();
    await page.goto(`${DESK}/message/${IDS.hostile}`);
    equal(await page.locator('#requests tbody tr').count(), 1, 'still one request');
  });

  await step('a forged cross-site form is refused with 403 and changes nothing', async () => {
    const port = evil.address().port;
    // localhost is another site than 127.0.0.1 (no cookie is sent); 127.0.0.1 on
    // another port is the same site but another origin (the cookie is sent).
    for (const host of ['localhost', '127.0.0.1']) {
      const [r] = await Promise.all([
        page.waitForResponse((x) => x.request().method() === 'POST' && x.url() === `${DESK}/message/${IDS.big}`),
        page.goto(`http://${host}:${port}/`),
      ]);
      equal(r.status(), 403, `status of the forged POST from ${host}`);
      equal(r.headers()['x-desk-refused'], 'cross-origin', `refused by the cross-origin check (${host})`);
    }
    await page.goto(`${DESK}/message/${IDS.big}`);
    equal((await page.locator('#state').textContent()).trim(), 'held', 'the big message is still held');
    equal(await page.locator('#requests tbody tr').count(), 0, 'no request for the big message');
    equal(await page.locator('#act').count(), 1, 'the reviewer may still act on it');
  });

  await step('log out', async () => {
    const r = await submitWith(page, '#logout button');
    equal(r.status(), 303, 'status of the logout POST');
    equal(new URL(page.url()).pathname, '/login', 'the page after logout');
    await page.goto(`${DESK}/`);
    equal(new URL(page.url()).pathname, '/login', 'the session is gone');
  });

  await step('a viewer sees no action buttons', async () => {
    const r = await login(page, DESK, VIEWER, VIEWER_PASSWORD);
    equal(r.status(), 303, 'status of the viewer login');
    const who = await page.locator('#who').textContent();
    check(who.includes(VIEWER) && who.includes('viewer'), `the signed-in user: ${who}`);
    equal((await rowIds(page)).length, 4, 'the viewer reads the list');
    equal(await page.locator('#held input[type=checkbox]').count(), 0, 'no checkboxes for a viewer');
    equal(await page.locator('fieldset.bulk').count(), 0, 'no bulk actions for a viewer');
    await page.goto(`${DESK}/message/${IDS.big}`);
    equal(await page.locator('#act').count(), 0, 'no action form for a viewer');
    equal(await page.locator('main button').count(), 0, 'no buttons on the message page for a viewer');
  });

  await step("a viewer's crafted POST is refused", async () => {
    // A form the viewer builds by hand (through the devtools protocol: the page runs
    // no script), with the viewer's own valid token, posted from the desk's origin.
    const [r] = await Promise.all([
      page.waitForResponse((x) => x.request().method() === 'POST' && x.url() === `${DESK}/message/${IDS.big}`),
      page.evaluate((id) => {
        const f = document.createElement('form');
        f.method = 'post';
        f.action = `/message/${id}`;
        const add = (name, value) => {
          const i = document.createElement('input');
          i.type = 'hidden';
          i.name = name;
          i.value = value;
          f.appendChild(i);
        };
        add('token', document.querySelector('#logout input[name=token]').value);
        add('action', 'release');
        add('comment', 'I am only a viewer');
        document.body.appendChild(f);
        f.submit();
      }, IDS.big),
    ]);
    equal(r.status(), 403, "status of the viewer's POST");
    await page.waitForLoadState('domcontentloaded');
    const why = await page.locator('#refusal').textContent();
    check(/viewer/.test(why), `the refusal names the role: ${why}`);
    await page.goto(`${DESK}/message/${IDS.big}`);
    equal(await page.locator('#requests tbody tr').count(), 0, 'still no request for the big message');
  });
  await step('an admin pulls the emergency brake from the desk', async () => {
    await page.goto(`${DESK}/`);
    await submitWith(page, '#logout button');
    const r = await login(page, DESK, ADMIN, ADMIN_PASSWORD);
    equal(r.status(), 303, 'status of the admin login');
    const who = await page.locator('#who').textContent();
    check(who.includes(ADMIN) && who.includes('admin'), `the signed-in user: ${who}`);
    equal(await page.locator('#brake').count(), 0, 'no banner while the brake is off');
    await page.click('#brake-pull summary');
    await page.fill('#brake-on [name=min_audience]', '1,000');
    await page.selectOption('#brake-on [name=hours]', '4');
    await page.fill('#brake-on [name=comment]', 'incident 4711: list storm');
    const pulled = await submitWith(page, '#brake-on button[name=action][value=on]');
    equal(pulled.status(), 303, 'status of the brake POST');
    equal(new URL(page.url()).pathname, '/', 'back on the held list');
    const text = await banner(page);
    check(/Emergency brake ON/.test(text), `the banner: ${text}`);
    check(text.includes('1,000 or more recipients'), `the banner names the audience: ${text}`);
    check(text.includes(`by ${ADMIN}`), `the banner names the admin: ${text}`);
    check(text.includes('incident 4711: list storm'), `the banner shows the comment: ${text}`);
    const times = text.match(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/g) || [];
    equal(times.length, 2, `since and until in the banner: ${text}`);
    equal((Date.parse(times[1]) - Date.parse(times[0])) / 3600e3, 4, 'hours the brake holds');
    equal(await page.locator('#brake-pull').count(), 0, 'no second pull form while it is on');
    equal(await page.locator('#brake-off').count(), 1, 'the admin may release it');
    equal((await rowIds(page)).length, 4, 'the list is still shown under the banner');
    await page.screenshot({ path: path.join(SHOTS, 'brake.png'), fullPage: true });
  });

  await step('every page shows the brake, to every user', async () => {
    await page.goto(`${DESK}/message/${IDS.big}`);
    equal(await page.locator('#message').getAttribute('data-queue-id'), IDS.big, 'the message page opened');
    check((await banner(page)).includes('incident 4711'), 'the banner on the message page');
    const viewer = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const other = await viewer.newPage();
      await login(other, DESK, VIEWER, VIEWER_PASSWORD);
      equal(new URL(other.url()).pathname, '/', "the viewer's list");
      check((await banner(other)).includes('incident 4711'), "the banner on the viewer's list");
      equal(await other.locator('#brake-off').count(), 0, 'a viewer cannot release the brake');
    } finally {
      await viewer.close();
    }
  });

  await step('the admin releases the brake and the banner is gone', async () => {
    await page.fill('#brake-off [name=comment]', 'storm over, list fixed');
    const released = await submitWith(page, '#brake-off button[name=action][value=off]');
    equal(released.status(), 303, 'status of the release POST');
    equal(new URL(page.url()).pathname, '/', 'back on the held list');
    equal(await page.locator('#brake').count(), 0, 'no banner on the list');
    equal(await page.locator('#brake-pull').count(), 1, 'the pull form is back');
    await page.goto(`${DESK}/message/${IDS.big}`);
    equal(await page.locator('#brake').count(), 0, 'no banner on the message page');
  });
} catch (e) {
  failed = true;
  await reportFailure(e, page, path.join(SHOTS, 'failure.png'));
} finally {
  evil.close();
  await browser.close();
}
if (failed) process.exit(1);
console.log('desk.mjs: every step passed');
