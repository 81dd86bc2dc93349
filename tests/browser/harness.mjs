// SPDX-License-Identifier: GPL-3.0-or-later
// What the browser scripts (desk.mjs, sender.mjs) share: reading the environment,
// chromium's flags, assertions, named steps and form submission.

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
export const ARGS = [
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
