// Browser check of the dashboard's WAN tab, run by adapters/tests/wan.rs during the
// edge+cloud rehearsal (or by hand against any node with remotes): headless Chromium
// opens the tab, waits until the row of a remote site shows the expected link state and
// waiting entries, saves a screenshot, and fails on any console error.
//
// Inputs (environment):
//   SQUALL_DASHBOARD_URL   the node's dashboard URL
//   SQUALL_WAN_SITE        the remote site whose row to check (e.g. cloud)
//   SQUALL_WAN_STATE       the link state expected (up, down)
//   SQUALL_WAN_SITE_SELF   this cluster's site name, expected in the heading line
//   SQUALL_WAN_WAITING     "some" (entries wait) or "none" (the outbox is empty)
//   SQUALL_SCREENSHOT      where the screenshot goes (a .png path)
//   SQUALL_CHROMIUM        the browser (default /usr/bin/chromium)
// Exits 0 on success, 1 on failure (with the reason), 2 on bad inputs.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => process.env['SQUALL_' + name] ?? fallback;
const url = env('DASHBOARD_URL', '');
const site = env('WAN_SITE', '');
const wantState = env('WAN_STATE', '');
const self = env('WAN_SITE_SELF', '');
const waiting = env('WAN_WAITING', '');
const shot = env('SCREENSHOT', '');
if (!url || !site || !wantState || !shot) {
  console.log('usage: SQUALL_DASHBOARD_URL=... SQUALL_WAN_SITE=cloud SQUALL_WAN_STATE=up SQUALL_SCREENSHOT=x.png node wan.test.mjs');
  process.exit(2);
}
mkdirSync(dirname(shot), { recursive: true });

const consoleErrors = [];
let browser;
try {
  browser = await chromium.launch({
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1440, height: 700 } })).newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  await page.goto(url.replace(/\/?$/, '/') + '#wan');
  const row = page.locator(`#wan-table tbody tr[data-site="${site}"]`);
  // The node's figures refresh every second: wait for the state (and the waiting count).
  await page.waitForFunction(
    ([s, state, wait]) => {
      const tr = document.querySelector(`#wan-table tbody tr[data-site="${s}"]`);
      if (!tr || tr.dataset.state !== state) return false;
      const n = Number((tr.children[2].textContent || '').replace(/k$/, '000'));
      if (wait === 'some') return n > 0;
      if (wait === 'none') return n === 0;
      return true;
    },
    [site, wantState, waiting],
    { timeout: 60000 },
  );
  const heading = await page.locator('#wan-site').textContent();
  if (self && !heading.includes(self)) throw new Error(`the site line says "${heading}", not site ${self}`);
  const cells = await row.locator('td').allTextContents();
  console.log(`WAN row: ${cells.join(' | ')}`);
  await page.screenshot({ path: shot, fullPage: false });
  if (consoleErrors.length) throw new Error('console errors: ' + consoleErrors.join('; '));
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log('FAILED: ' + (e && e.message ? e.message : e));
  try {
    const pages = browser ? browser.contexts().flatMap((c) => c.pages()) : [];
    if (pages.length) {
      const rows = await pages[0].locator('#wan-table tbody tr').allTextContents();
      console.log('the WAN table: ' + JSON.stringify(rows));
      await pages[0].screenshot({ path: shot.replace(/\.png$/, '-failure.png') });
    }
  } catch (_) {
    // The report above is what matters.
  }
  if (consoleErrors.length) console.log('console errors: ' + consoleErrors.join('; '));
  if (browser) await browser.close();
  process.exit(1);
}
