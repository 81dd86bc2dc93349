// SPDX-License-Identifier: GPL-3.0-or-later
// The sender's pages of the review desk in headless chromium, driven by
// playwright-core; started by tests/desk_browser.rs after desk.mjs, with signed sender
// links for three held messages. A sender (no login) withdraws one, asks for another's
// release and confirms a third; then a reviewer sees the plea first on the held list.
// Every step asserts; the first failure is printed with its step, a screenshot of the
// page is saved as sender-failure.png, and the script exits 1.
//
// Environment: DESK_URL, DESK_REVIEWER, DESK_REVIEWER_PASSWORD, SENDER_LINKS (JSON:
// withdraw, ask, send: absolute link URLs; asked: the queue id of the ask link;
// audience: the confirmed message's audience as the page writes it), DESK_SCREENSHOTS,
// CHROMIUM.

import { check, env, equal, launch, login, reportFailure, step, submitWith } from './harness.mjs';
import path from 'node:path';

const DESK = env('DESK_URL').replace(/\/$/, '');
const REVIEWER = env('DESK_REVIEWER');
const REVIEWER_PASSWORD = env('DESK_REVIEWER_PASSWORD');
const LINKS = JSON.parse(env('SENDER_LINKS'));
const SHOTS = env('DESK_SCREENSHOTS');
const CHROMIUM = env('CHROMIUM');


const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: true });

// Opens a sender link: its one button's words, after checking the page's basics.
async function open(page, url, heading) {
  const r = await page.goto(url);
  equal(r.status(), 200, `status of ${heading}`);
  const csp = r.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'none'") && csp.includes("form-action 'self'"), `CSP header: ${csp}`);
  const h = await page.locator('#sender-heading').textContent();
  check(h.includes(heading), `the heading: ${h}`);
  equal(await page.locator('button').count(), 1, 'one button');
  equal(await page.locator('#who').count(), 0, 'nobody is signed in');
  return (await page.locator('button').textContent()).trim();
}

const { browser, context } = await launch(CHROMIUM, 1000);
const page = await context.newPage();
let failed = false;

try {
  await step('the sender opens the withdraw link and sees one button', async () => {
    const button = await open(page, LINKS.withdraw, 'Withdraw your message?');
    equal(button, 'Withdraw my message', 'the button');
    const lead = await page.locator('#sender-lead').textContent();
    check(/would reach 30 people through project-x@example.org/.test(lead), `the lead: ${lead}`);
    await shot(page, 'sender-withdraw.png');
  });

  await step('withdrawing says nobody will receive it', async () => {
    const r = await submitWith(page, '#sender-act button');
    equal(r.status(), 200, 'status of the withdraw POST');
    const lead = await page.locator('#sender-lead').textContent();
    equal(lead, 'Your message was withdrawn; nobody will receive it.', 'the result');
    equal(await page.locator('button').count(), 0, 'nothing left to press');
    await shot(page, 'sender-withdrawn.png');
  });

  await step('the same link again offers nothing', async () => {
    await page.goto(LINKS.withdraw);
    equal(await page.locator('button').count(), 0, 'no button');
    const note = await page.locator('#sender-note').textContent();
    check(note.includes('You withdrew this message'), `the note: ${note}`);
  });

  await step('the sender asks for release, saying why', async () => {
    const button = await open(page, LINKS.ask, 'Ask for your message to be sent');
    equal(button, 'Ask for release', 'the button');
    check(await page.locator('#why').evaluate((e) => e.required && e.maxLength === 2000), 'a required textarea of 2000');
    await page.fill('#why', 'The night shift must know the ward moves <today>.\nPlease send it.');
    await shot(page, 'sender-ask.png');
    const r = await submitWith(page, '#sender-act button');
    equal(r.status(), 200, 'status of the ask POST');
    const lead = await page.locator('#sender-lead').textContent();
    check(lead.startsWith('Your request was passed to the administrators; you will be told'), `the result: ${lead}`);
    await shot(page, 'sender-asked.png');
  });

  await step('the sender confirms a message held for them', async () => {
    const button = await open(page, LINKS.send, 'Send your message to all');
    equal(button, `Send it to all ${LINKS.audience} people`, 'the button');
    await shot(page, 'sender-send.png');
    const r = await submitWith(page, '#sender-act button');
    equal(r.status(), 200, 'status of the send POST');
    const lead = await page.locator('#sender-lead').textContent();
    equal(lead, `Your message is on its way to ${LINKS.audience} people.`, 'the result');
    await shot(page, 'sender-sent.png');
  });

  await step('a reviewer sees the plea first on the held list', async () => {
    const admin = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const desk = await admin.newPage();
      await login(desk, DESK, REVIEWER, REVIEWER_PASSWORD);
      equal(new URL(desk.url()).pathname, '/', 'the held list');
      equal(await desk.locator('main > h1 + *').evaluate((e) => e.id), 'pleas', 'the pleas box comes first');
      const plea = await desk.locator(`#pleas li[data-queue-id="${LINKS.asked}"] .plea`).textContent();
      check(plea.includes('The night shift must know the ward moves <today>.'), `the plea as text: ${plea}`);
      check((await desk.locator('#held .tag.waiting').count()) >= 1, 'a hold waiting for its sender is tagged');
      await desk.screenshot({ path: path.join(SHOTS, 'sender-list.png'), fullPage: true });
    } finally {
      await admin.close();
    }
  });
} catch (e) {
  failed = true;
  await reportFailure(e, page, path.join(SHOTS, 'sender-failure.png'));
} finally {
  await browser.close();
}
if (failed) process.exit(1);
console.log('sender.mjs: every step passed');
