import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLI, ROOT, workerPids } from './helpers/cli.js';

/**
 * The dashboard in a real browser: Debian's chromium, driven headless by
 * playwright-core, on the page `ringattn train --view` serves while a 2-worker
 * run trains. CI installs chromium (.ci/setup-system.sh); elsewhere the test is
 * skipped, saying so, when there is no chromium to drive.
 */

const CHROMIUM = process.env.RINGATTN_CHROMIUM ?? '/usr/bin/chromium';
const BASE_PORT = 29740;
const STEPS = 60;
const tmp = mkdtempSync(path.join(tmpdir(), 'ra-view-browser-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

const missing = existsSync(CHROMIUM) ? null : `no chromium at ${CHROMIUM} (apt-get install chromium, or set RINGATTN_CHROMIUM)`;
if (missing && process.env.CI) throw new Error(`view-browser: ${missing}; CI must install it (.ci/setup-system.sh)`);
if (missing) process.stderr.write(`view-browser.test: skipped: ${missing}\n`);

test('ringattn train --view: the live page in headless chromium shows the loss as it trains, with no console error', { skip: missing ?? false, timeout: 180000 }, async () => {
  const { chromium } = await import('playwright-core');
  const spec = path.join(tmp, 'spec.yaml');
  // Long enough (about 5-10 s of steps on 2 cores) that the page sees steps arrive.
  writeFileSync(
    spec,
    readFileSync(path.join(ROOT, 'configs', 'ci.yaml'), 'utf8')
      .replace(/^ring:\n/m, `ring:\n  basePort: ${BASE_PORT}\n`)
      .replace(/steps: 4\n/, `steps: ${STEPS}\n`)
      .replace(/seqLen: 128\n/, 'seqLen: 2048\n')
      .replace(/dModel: 32\n/, 'dModel: 64\n')
      .replace(/evalEvery: 2\n/, 'evalEvery: 20\n')
      .replace(/checkpointEvery: 2\n/, 'checkpointEvery: 20\n'),
  );
  const runDir = path.join(tmp, 'run');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    // As root in CI: no sandbox; and no background traffic to a network this machine cannot reach.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const child = spawn(process.execPath, [CLI, 'train', '--config', spec, '--run-dir', runDir, '--view', '--port', '0', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(stderr);
        if (m) resolve(m[1]);
      });
      void exited.then((code) => reject(new Error(`train exited (${code}) before serving the dashboard:\n${stderr}`)));
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
    const errors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => {
      // The page itself closes its event stream once the run has ended: that request is aborted, by design.
      if (r.url().endsWith('/api/events') && r.failure()?.errorText === 'net::ERR_ABORTED') return;
      errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    });
    await page.goto(url);
    const points = () => page.$eval('#loss-chart', (e) => Number(e.getAttribute('data-points')));
    // The first snapshot is drawn; what it held, the stream must add to.
    await page.waitForFunction(() => document.querySelector('#state')?.textContent !== 'connecting');
    const first = await points();
    assert.ok(first < STEPS, `the run ended (${first} steps) before the page could see it live: make it longer`);
    await page.waitForFunction((n) => Number(document.querySelector('#loss-chart')?.getAttribute('data-points')) >= n, Math.max(3, first + 1), { timeout: 120000 });
    const live = await points();
    assert.ok(live >= 3 && live > first, `points: ${first} at first, then ${live}`);
    // uPlot drew the series: its canvas is there and the legend names both.
    assert.equal(await page.locator('#loss-chart canvas').count(), 1);
    assert.match(await page.locator('#loss-chart').innerText(), /train[\s\S]*eval/);
    await page.screenshot({ path: path.join(tmp, 'dashboard-live.png'), fullPage: true });

    // To the end: the launcher's last ring.json reaches the page before the server stops.
    await page.waitForFunction(() => document.querySelector('#state')?.textContent === 'finished', null, { timeout: 150000 });
    assert.equal(await exited, 0, stderr);
    assert.equal(await points(), STEPS);
    assert.match(await page.locator('#ring-table').innerText(), /\b0\s+local\s+\d+\s+done[\s\S]*\b1\s+local\s+\d+\s+done/);
    assert.equal(await page.locator('#bars svg g').count(), 2 * 30, 'the last 30 steps of both ranks as stacked bars');
    assert.match(await page.locator('#ckpt-table').innerText(), /ckpt-60\s+60/);
    assert.match(await page.locator('#spec').innerText(), new RegExp(`basePort: ${BASE_PORT}`));
    const shot = path.join(tmp, 'dashboard-finished.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10000);
    assert.deepEqual(errors, []);
    assert.match(stdout, new RegExp(`^trained ${STEPS} steps`));
    assert.match(stderr, /dashboard stopped with the run; `ringattn view .*` serves it again/);
    process.stderr.write(`view-browser.test: screenshots in ${tmp} (removed after the test; RINGATTN_KEEP_SCREENSHOTS=dir copies them)\n`);
    if (process.env.RINGATTN_KEEP_SCREENSHOTS) {
      for (const f of ['dashboard-live.png', 'dashboard-finished.png']) writeFileSync(path.join(process.env.RINGATTN_KEEP_SCREENSHOTS, f), readFileSync(path.join(tmp, f)));
    }
  } finally {
    child.kill('SIGINT');
    await exited;
    await browser.close();
  }
  assert.deepEqual(workerPids(BASE_PORT), []);
});
