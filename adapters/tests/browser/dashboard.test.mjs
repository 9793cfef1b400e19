// Browser test of the node's dashboard, run by adapters/tests/dashboard.rs against a real
// 3-node cluster (or by hand against any, e.g. `squall up`): headless Chromium loads the
// dashboard of the first node, sees the members, sees pool counts change live as objects
// are put through the REST API, browses and time-travels a persistent pool, uploads UDLs
// through the form, sees a DFG drawn with per-vertex rates, sees the view change when a
// node is killed, and fails on any console error. Screenshots go to SQUALL_SCREENSHOTS.
//
// Inputs (environment, or `--name=value` arguments with the same names in lower case
// without the prefix, e.g. `--urls=...`):
//   SQUALL_DASHBOARD_URLS  dashboard URLs of the cluster's nodes, comma-separated; the
//                          page is the first's, REST calls go to the second's (or first's)
//   SQUALL_KILL_PID        pid of a node process to SIGKILL (not the first URL's node)
//   SQUALL_KILL_NODE       that node's id (optional: checks it shows as failed)
//   SQUALL_MEMBERS         members expected at first (default 3)
//   SQUALL_UDL_PLUGIN      a UDL plugin library to upload (optional: the example printer)
//   SQUALL_SCREENSHOTS     where screenshots go (default <repo>/target/browser-screenshots)
//   SQUALL_CHROMIUM        the browser (default /usr/bin/chromium)
//   SQUALL_EXPECT_GPU      1 where the node has a GPU (else the GPU section must say
//                          "GPU: unavailable — <reason>")
// Exits 0 on success, 1 on failure (with the reason), 2 on bad inputs.

import { mkdirSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(process.argv.slice(2)
  .filter((a) => a.startsWith('--') && a.includes('='))
  .map((a) => [a.slice(2, a.indexOf('=')).toLowerCase().replace(/-/g, '_'), a.slice(a.indexOf('=') + 1)]));
const input = (name, fallback) => args[name] ?? process.env['SQUALL_' + name.toUpperCase()] ?? fallback;

const urls = (input('dashboard_urls', '') || input('urls', '')).split(',').map((u) => u.trim()).filter(Boolean)
  .map((u) => (u.endsWith('/') ? u : u + '/'));
const killPid = Number(input('kill_pid', '0'));
const killNode = input('kill_node', '');
const members = Number(input('members', '3'));
const plugin = input('udl_plugin', '');
const shots = resolve(input('screenshots', join(here, '..', '..', '..', 'target', 'browser-screenshots')));
const executablePath = input('chromium', '/usr/bin/chromium');
if (!urls.length) {
  console.log('usage: SQUALL_DASHBOARD_URLS=http://host:port/,... SQUALL_KILL_PID=pid node dashboard.test.mjs');
  process.exit(2);
}
const page0 = urls[0];
const rest = urls[1] || urls[0];
mkdirSync(shots, { recursive: true });

const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);

/** A REST call from the test itself (not the page). */
async function call(method, path, body) {
  const res = await fetch(rest + path.replace(/^\//, ''), { method, body });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const textOf = (page, sel) => page.locator(sel).first().textContent();

let browser;
let page;
const problems = [];
const consoleErrors = [];
let step = 'start';

async function main() {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on('console', (m) => {
    if (m.type() === 'error') {
      const where = m.location();
      consoleErrors.push(`[${step}] ${m.text()}${where && where.url ? ` (${where.url}:${where.lineNumber})` : ''}`);
    }
  });
  page.on('pageerror', (e) => consoleErrors.push(`[${step}] uncaught: ${e.message}`));
  const shot = async (name) => {
    const path = join(shots, name + '.png');
    await page.screenshot({ path, fullPage: true });
    log('screenshot', path);
  };
  const waitFor = (what, fn, arg, timeout = 30000) => page.waitForFunction(fn, arg, { timeout, polling: 100 })
    .catch((e) => { throw new Error(`${what}: ${e.message.split('\n')[0]}`); });

  // ----- overview: the members, the view, the charts ------------------------------------
  step = 'overview';
  log('opening', page0);
  await page.goto(page0, { waitUntil: 'load' });
  await waitFor(`${members} members`, (n) => document.querySelector('#member-count').textContent === String(n), members);
  await waitFor('live events', () => document.querySelector('#conn-status').dataset.state === 'live');
  await waitFor('the members table', (n) => document.querySelectorAll('#members-table tbody tr[data-health="up"]').length === n, members);
  await waitFor('the view history', () => document.querySelectorAll('#views-table tbody tr').length > 0);
  const view0 = Number(await textOf(page, '#view-id'));
  log('members', members, 'view', view0);
  // The data disk's free space, from squall_disk_free_bytes (no alarm on this machine).
  await waitFor('the data disk card', () => /^\d+(\.\d+)? [KMGT]?i?B$/.test(document.querySelector('#node-disk').textContent));
  log('data disk free', await textOf(page, '#node-disk'));
  // A little traffic so the rate charts move, and a few seconds of points.
  for (let i = 0; i < 10; i += 1) await call('PUT', `api/v1/objects/cache/warmup/k${i}`, `w${i}`);
  await waitFor('the charts', () => document.querySelectorAll('#chart-ops canvas, #chart-requests canvas').length === 2);
  await sleep(3500);
  for (let i = 0; i < 10; i += 1) await call('PUT', `api/v1/objects/cache/warmup/k${i}`, `w${i}`);
  await sleep(1500);
  await shot('overview');

  // ----- shards ---------------------------------------------------------------------------
  step = 'shards';
  await page.click('#tab-shards');
  await waitFor('the shards table', () => document.querySelectorAll('#shards-table tbody tr[data-shard]').length >= 3);
  const leader = await textOf(page, '#shards-table tr[data-kind="persistent"] td.leader');
  if (!/^n\d+$/.test(leader || '')) problems.push(`the persistent shard shows no leader: ${leader}`);
  await shot('shards');

  // ----- pools: counts change live, browse, preview, time travel ----------------------------
  step = 'pools';
  await page.click('#tab-pools');
  const cell = '#pools-table tr[data-pool="/demo"] [data-testid="pool-objects"]';
  await waitFor('the /demo pool count', (sel) => /^\d+$/.test(document.querySelector(sel)?.textContent || ''), cell);
  const before = Number(await textOf(page, cell));
  const stamps = [];
  const N = 12;
  for (let i = 0; i < N; i += 1) {
    const w = await call('PUT', `api/v1/objects/demo/browser/k${String(i).padStart(2, '0')}`, `value ${i}`);
    stamps.push(w.timestamp_us);
    await sleep(40);
  }
  log(`put ${N} objects into /demo (count was ${before})`);
  await waitFor('the /demo count to change live', ([sel, n]) => Number(document.querySelector(sel)?.textContent) === n, [cell, before + N]);
  log('the page shows', before + N, 'objects in /demo');
  await page.click('#pools-table tr[data-pool="/demo"]');
  await page.locator('#key-list li[data-key="/demo/browser/k00"]').waitFor();
  await page.click('#key-list li[data-key="/demo/browser/k03"]');
  await waitFor('the preview', () => document.querySelector('[data-testid="preview-key"]')?.textContent === '/demo/browser/k03'
    && document.querySelector('#object-value')?.textContent === 'value 3');
  // Time travel: to just after the 6th write, the later keys disappear.
  await waitFor('the time slider', () => document.querySelector('#time-slider').dataset.earliest !== '', null, 60000);
  const earliest = Number(await page.locator('#time-slider').getAttribute('data-earliest'));
  if (earliest > Math.ceil(stamps[0] / 1000)) problems.push(`the earliest write found (${earliest} ms) is after the first put (${stamps[0]} µs)`);
  const at = Math.floor(stamps[5] / 1000) + 1;
  await page.evaluate((ms) => {
    const s = document.querySelector('#time-slider');
    s.value = String(ms);
    s.dispatchEvent(new Event('input', { bubbles: true }));
    s.dispatchEvent(new Event('change', { bubbles: true }));
  }, at);
  await waitFor('the keys as of then', () => document.querySelector('#key-list li[data-key="/demo/browser/k05"]')
    && !document.querySelector('#key-list li[data-key="/demo/browser/k06"]'));
  await waitFor('the preview as of then', () => /As of/.test(document.querySelector('#object-preview').textContent)
    && document.querySelector('#object-value')?.textContent === 'value 3'
    && !/now/.test(document.querySelector('#object-preview dl').lastChild.textContent));
  log('time travel to', new Date(at).toISOString(), 'shows', await textOf(page, '#key-count'));
  await shot('pools');
  await page.click('#time-now');
  await page.locator('#key-list li[data-key="/demo/browser/k11"]').waitFor();

  // ----- UDLs: upload through the form ------------------------------------------------------
  step = 'udls';
  await page.click('#tab-udls');
  const upload = async (file, name, entry) => {
    await page.setInputFiles('#udl-file', file);
    await page.fill('#udl-name', name);
    await page.fill('#udl-entry', entry);
    await page.click('#udl-submit');
    await waitFor(`the upload of ${name}`, () => ['ok', 'error'].includes(document.querySelector('#udl-upload-status').dataset.state), null, 60000);
    const status = await textOf(page, '#udl-upload-status');
    if (!(await page.locator('#udl-upload-status[data-state="ok"]').count())) throw new Error(`upload ${name}: ${status}`);
    await page.locator(`#udls-table tr[data-name="${name}"]`).waitFor();
    log('uploaded', name, '-', status);
  };
  const dir = mkdtempSync(join(tmpdir(), 'squall-dashboard-'));
  const py = join(dir, 'echo_udl.py');
  writeFileSync(py, 'class Echo:\n    def __init__(self, config):\n        pass\n\n'
    + '    def handle(self, obj, ctx):\n        ctx.emit(obj.key_suffix, obj.value)\n');
  await upload(py, 'py-echo', 'Echo');
  let printerUuid = null;
  if (plugin) {
    await upload(plugin, 'printer', '');
    printerUuid = await page.locator('#udls-table tr[data-name="printer"]').getAttribute('data-uuid');
  }
  await shot('udls');

  // ----- DFGs: drawn, with per-vertex rates -------------------------------------------------
  step = 'dfgs';
  const dfgId = '6f1c2d3e-0000-4a2b-9c3d-00000000d0a5';
  if (printerUuid) {
    const vertex = (pathname, dest) => ({
      pathname,
      user_defined_logic_list: [printerUuid],
      shard_dispatcher_list: ['one'],
      user_defined_logic_hook_list: ['both'],
      user_defined_logic_config_list: [{ quiet: true }],
      destinations: [dest],
    });
    await call('POST', 'api/v1/dfgs', JSON.stringify([{
      id: dfgId,
      desc: 'printer pipeline (browser test)',
      graph: [
        vertex('/cache/in/', { '/demo/out/': 'put', '/cache/mid/': 'trigger_put' }),
        vertex('/cache/mid/', { '/demo/final/': 'put' }),
      ],
    }]));
    log('added DFG', dfgId);
  }
  await page.click('#tab-dfgs');
  if (printerUuid) {
    await page.locator(`#dfg-list [data-dfg="${dfgId}"] g.vertex[data-vertex="/cache/in"]`).waitFor();
    // Inputs for a few seconds, so rates show while the page looks.
    const feed = (async () => {
      for (let i = 0; i < 60; i += 1) {
        await call('PUT', `api/v1/objects/cache/in/k${i}`, `input ${i}`);
        await sleep(50);
      }
    })();
    await waitFor('per-vertex rates', () => [...document.querySelectorAll('#dfg-list g.vertex:not(.sink)')]
      .some((g) => /\/s · mean .*runs/.test(g.querySelector('.v-stats').textContent) && Number(g.dataset.invocations) > 0));
    await feed;
    await sleep(300);
    log('vertex stats:', await page.locator('#dfg-list .v-stats').allTextContents());
  } else {
    log('no plugin given: the DFG section shows', await textOf(page, '#dfg-list'));
  }
  await shot('dfgs');

  // ----- GPU ----------------------------------------------------------------------------------
  step = 'gpu';
  await page.click('#tab-gpu');
  // This machine has no GPU (CI): the section says so, with the reason, and a GPU-cached
  // pool still shows its cache (host memory) with the objects put into it.
  await waitFor('the GPU availability', () => /^GPU: (available|unavailable — .+)/
    .test(document.querySelector('#gpu-status').textContent));
  const gpuLine = await textOf(page, '#gpu-status');
  log('GPU section:', gpuLine);
  if (!/^GPU: unavailable — \S/.test(gpuLine) && input('expect_gpu', '') !== '1') {
    throw new Error(`expected "GPU: unavailable — <reason>" on a machine without a GPU, got ${JSON.stringify(gpuLine)}`);
  }
  await call('POST', 'api/v1/pools', JSON.stringify({
    path: '/gpu-browser', kind: 'volatile', gpu_cache: { device: 0, capacity: '1MiB' },
  }));
  for (let i = 0; i < 4; i += 1) await call('PUT', `api/v1/objects/gpu-browser/k${i}`, 'x'.repeat(1024 * (i + 1)));
  await waitFor('the GPU-cached pool in the cache table', () => {
    const row = document.querySelector('#gpu-caches-table tr[data-pool="/gpu-browser"]');
    return row && row.dataset.entries === '4';
  }, undefined, 30000);
  log('GPU caches:', await textOf(page, '#gpu-caches-table tbody'));
  if (printerUuid) {
    // A UDL asking for a GPU over the GPU-cached pool, run on every replica: once it has
    // run, this node lists it as a warm model (in host memory here, with no GPU).
    await call('POST', 'api/v1/dfgs', JSON.stringify([{
      id: '6f1c2d3e-0000-4a2b-9c3d-00000000d0a6',
      desc: 'a model on the GPU-cached pool (browser test)',
      graph: [{
        pathname: '/gpu-browser/in/',
        user_defined_logic_list: [printerUuid],
        shard_dispatcher_list: ['all'],
        user_defined_logic_hook_list: ['ordered'],
        user_defined_logic_config_list: [{ quiet: true, resources: { gpu: 1 } }],
        destinations: [{}],
      }],
    }]));
    for (let i = 0; i < 3; i += 1) await call('PUT', `api/v1/objects/gpu-browser/in/m${i}`, `image ${i}`);
    await waitFor('the warm model in the models table', (uuid) => {
      const row = document.querySelector('#gpu-models-table tr[data-vertex^="/gpu-browser/in"]');
      return row && row.dataset.udl === uuid && /^(cuda:\d+|host)$/.test(row.dataset.device)
        && Number(row.lastElementChild.textContent) >= 3;
    }, printerUuid, 30000);
    log('warm models:', await textOf(page, '#gpu-models-table tbody'));
  }
  await shot('gpu');

  // ----- kill a node: the view changes --------------------------------------------------------
  step = 'kill';
  await page.click('#tab-overview');
  if (killPid > 0) {
    log('killing pid', killPid, killNode ? `(node ${killNode})` : '');
    process.kill(killPid, 'SIGKILL');
    await waitFor('a new view without the killed node', ([v, n]) => Number(document.querySelector('#view-id').textContent) > v
      && document.querySelector('#member-count').textContent === String(n), [view0, members - 1], 60000);
    if (killNode !== '') {
      await waitFor('the killed node shown failed', (n) => document.querySelector(`#members-table tr[data-node="${n}"]`)?.dataset.health === 'failed', killNode);
    }
    await waitFor('the new view in the history', (v) => document.querySelector(`#views-table tr[data-view-id="${v}"]`),
      Number(await textOf(page, '#view-id')));
    log('view', await textOf(page, '#view-id'), 'members', await textOf(page, '#member-count'));
    await sleep(1500);
    await shot('after-kill');
  } else {
    log('no SQUALL_KILL_PID: skipping the kill');
  }

  step = 'end';
  await sleep(500);
  await context.close();
}

let failed = null;
try {
  await main();
} catch (e) {
  failed = `${step}: ${e && e.message ? e.message : e}`;
  if (page) {
    const path = join(shots, 'failure.png');
    await page.screenshot({ path, fullPage: true }).then(() => log('screenshot', path), () => {});
  }
}
if (browser) await browser.close().catch(() => {});
for (const e of consoleErrors) problems.push('console error ' + e);
if (failed) problems.unshift(failed);
if (problems.length) {
  console.log('FAIL');
  for (const p of problems) console.log('  ' + p);
  process.exit(1);
}
console.log(`PASS (${((Date.now() - started) / 1000).toFixed(1)}s; screenshots in ${shots})`);
