// SPDX-License-Identifier: GPL-3.0-or-later
// The fleet's review desk in headless chromium: one PostgreSQL quarantine that two
// relays write to, seen on relay B's desk. Started by tests/desk_browser.rs, which runs
// PostgreSQL and the daemon (as relay B) and seeds one held message per relay, and on
// relay B one more with relay A's queue id (queue ids repeat across relays): every
// link names its relay and reaches that relay's record. Every step asserts; the first
// failure is printed with its step, a screenshot is saved as fleet-failure.png, and
// the script exits 1.
//
// Environment: DESK_URL, DESK_REVIEWER, DESK_REVIEWER_PASSWORD, FLEET_FIXTURE (JSON:
// {"a": {"id": queue id, "relay": name, "subject": text}, "b": {...}, "same": {...}}),
// DESK_SCREENSHOTS, CHROMIUM.

import { check, env, equal, launch, login, reportFailure, step, submitWith } from './harness.mjs';
import path from 'node:path';

const DESK = env('DESK_URL').replace(/\/$/, '');
const REVIEWER = env('DESK_REVIEWER');
const REVIEWER_PASSWORD = env('DESK_REVIEWER_PASSWORD');
const FLEET = JSON.parse(env('FLEET_FIXTURE'));
const SHOTS = env('DESK_SCREENSHOTS');
const CHROMIUM = env('CHROMIUM');

// The held list's rows, as RELAY:QUEUEID (in order).
async function rowIds(page) {
  return page
    .locator('#held tbody tr')
    .evaluateAll((rows) => rows.map((r) => `${r.dataset.relay}:${r.dataset.queueId}`));
}

// A seeded message's address, as the desk names it.
const address = (m) => `${m.relay}:${m.id}`;

// The row of a seeded message.
const row = (page, m) => page.locator(`#held tr[data-queue-id="${m.id}"][data-relay="${m.relay}"]`);

// The Relay cell of the row of a seeded message.
async function relayOf(page, m) {
  return (await row(page, m).locator('td.relay').textContent()).trim();
}

// Opens a seeded message's page from its row of the held list.
async function open(page, m) {
  await Promise.all([
    page.waitForURL(new RegExp(`/message/${address(m)}$`)),
    row(page, m).locator(`a[href$="/message/${address(m)}"]`).click(),
  ]);
  equal((await page.locator('#relay').textContent()).trim(), m.relay, 'the message page names its relay');
  equal((await page.locator('#subject').textContent()).trim(), m.subject, "that relay's message");
}

const { browser, context } = await launch(CHROMIUM, 1280);
const page = await context.newPage();
let failed = false;

try {
  await step("relay B's desk lists both relays' holds with their relay", async () => {
    const r = await login(page, DESK, REVIEWER, REVIEWER_PASSWORD);
    equal(r.status(), 303, 'status of the login POST');
    const heads = await page.locator('#held thead th').allTextContents();
    check(heads.map((h) => h.trim()).includes('Relay'), `a Relay column: ${heads}`);
    const ids = (await rowIds(page)).sort();
    const all = [FLEET.a, FLEET.b, FLEET.same].map(address).sort();
    equal(JSON.stringify(ids), JSON.stringify(all), 'rows of the fleet');
    for (const m of [FLEET.a, FLEET.b, FLEET.same]) {
      equal(await relayOf(page, m), m.relay, `the row of ${address(m)}`);
      equal(await row(page, m).locator('input[name=id]').inputValue(), address(m), 'the bulk box names the relay');
    }
    equal((await page.locator('#on-relay').textContent()).trim(), `this relay: ${FLEET.b.relay}`, 'the header names the desk\'s relay');
    await page.screenshot({ path: path.join(SHOTS, 'fleet-list.png'), fullPage: true });
  });

  await step('filter by relay', async () => {
    await page.fill('#filter input[name=relay]', FLEET.a.relay);
    await Promise.all([page.waitForURL(/relay=/), page.click('#filter button[type=submit]')]);
    equal(JSON.stringify(await rowIds(page)), JSON.stringify([address(FLEET.a)]), `rows of ${FLEET.a.relay}`);
    equal(await page.inputValue('#filter input[name=relay]'), FLEET.a.relay, 'the filter keeps its value');
    check((await page.locator('#total').textContent()).includes('1 matching'), 'the total for one relay');
    await page.screenshot({ path: path.join(SHOTS, 'fleet-filtered.png'), fullPage: true });
  });

  await step("a release of relay A's message, asked on relay B, waits for relay A", async () => {
    await open(page, FLEET.a);
    check((await page.getAttribute('#act', 'action')).endsWith(`/message/${address(FLEET.a)}`), 'the form names the relay');
    await page.fill('#act [name=comment]', 'asked from the other relay');
    const r = await submitWith(page, '#act button[name=action][value=release]');
    equal(r.status(), 303, 'status of the release POST');
    const rows = page.locator('#requests tbody tr');
    equal(await rows.count(), 1, 'requests listed');
    equal((await rows.first().locator('td.state').textContent()).trim(), 'pending', 'the request waits');
    const note = await page.locator('#no-action').textContent();
    check(note.includes(`relay ${FLEET.a.relay} carries it out`), `the page says who acts: ${note}`);
    const audit = await page.locator('#audit tbody tr').last().textContent();
    check(audit.includes(REVIEWER) && audit.includes(FLEET.b.relay), `the audit names the reviewer and relay B: ${audit}`);
    await page.screenshot({ path: path.join(SHOTS, 'fleet-message.png'), fullPage: true });
  });

  await step("relay B's message with the same queue id is its own", async () => {
    await page.goto(`${DESK}/`);
    await open(page, FLEET.same);
    check((await page.getAttribute('#act', 'action')).endsWith(`/message/${address(FLEET.same)}`), 'the form names relay B');
    equal(await page.locator('#requests tbody tr').count(), 0, "no request for relay B's message");
    await page.screenshot({ path: path.join(SHOTS, 'fleet-same-id.png'), fullPage: true });
  });
} catch (e) {
  failed = true;
  await reportFailure(e, page, path.join(SHOTS, 'fleet-failure.png'));
} finally {
  await browser.close();
}
if (failed) process.exit(1);
console.log('fleet.mjs: every step passed');
