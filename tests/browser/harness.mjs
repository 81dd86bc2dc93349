// SPDX-License-Identifier: GPL-3.0-or-later
// What the browser scripts (desk.mjs, sender.mjs, fleet.mjs) share: reading the
// environment, launching chromium, assertions, named steps, form submission and login.

import { chromium } from 'playwright-core';

/** The value of environment variable `name`; exits 2 when it is not set. */
export function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${process.argv[1]}: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

/** Flags that keep chromium off the network (the machine's network is closed). */
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--disable-extensions',
];

/** A failed assertion. */
export class Failed extends Error {}

/** Fails with `what` unless `cond`. */
export function check(cond, what) {
  if (!cond) throw new Failed(what);
}

/** Fails unless `got` is `want`. */
export function equal(got, want, what) {
  if (got !== want) throw new Failed(`${what}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
}

/** The step running now, for the failure message. */
export const progress = { current: 'start' };

/** Runs one named step and logs its time. */
export async function step(name, fn) {
  progress.current = name;
  const t0 = Date.now();
  await fn();
  console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}

/** Submits a form by clicking `button`, returning the POST's response. */
export async function submitWith(page, button) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.request().isNavigationRequest()),
    page.locator(button).click(),
  ]);
  await page.waitForLoadState('domcontentloaded');
  return response;
}

/** Launches headless chromium (`executable`) with a context `width` pixels wide and the
 * scripts' timeouts; returns the browser and the context. */
export async function launch(executable, width) {
  const browser = await chromium.launch({ executablePath: executable, args: ARGS, headless: true, timeout: 30000 });
  const context = await browser.newContext({ viewport: { width, height: 800 } });
  context.setDefaultTimeout(10000);
  context.setDefaultNavigationTimeout(15000);
  return { browser, context };
}

/** Logs `user` in on the desk at `desk`, returning the login POST's response. */
export async function login(page, desk, user, password) {
  await page.goto(`${desk}/login`);
  await page.fill('#login input[name=user]', user);
  await page.fill('#login input[name=password]', password);
  return submitWith(page, '#login button[type=submit]');
}

/** Reports the failure `e` of the step running now, with the page's address, and saves
 * a screenshot of `page` as `file` (when the page is still there). */
export async function reportFailure(e, page, file) {
  const what = e instanceof Failed ? e.message : e.stack || String(e);
  console.error(`FAIL ${progress.current}: ${what}`);
  try {
    console.error(`     at ${page.url()}`);
    await page.screenshot({ path: file, fullPage: true });
    console.error(`     screenshot: ${file}`);
  } catch {
    // The page is gone; the message above says why.
  }
}
