// The dashboard walk, in Debian's chromium driven by playwright-core. Started by
// lapdev-server/tests/browser.rs, which runs the real server, Kubernetes API
// double and manager, and reads this script's stdout:
//   `token <secret>`  the cluster token the page showed: start a manager with it
//   `ok <step>`       a step passed
// Any failure throws: the exit code is non-zero and stderr says which step.
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const BASE = process.env.LAPDEV_URL;
const PASSWORD = process.env.LAPDEV_PASSWORD;
const SHOTS = process.env.LAPDEV_SCREENSHOTS;
const HOSTILE = '<img/src=x/onerror=window.pwned=1>';
const TIMEOUT = 60_000;
mkdirSync(SHOTS, { recursive: true });

const say = (line) => process.stdout.write(`${line}\n`);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});

// A page in a new browser context, or another tab of `context` (tabs of one
// context share cookies and the events SharedWorker, as a browser's do).
async function newPage(context) {
  if (!context) {
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Runs before the page's own code (through the DevTools protocol, not subject
    // to the page's CSP): records every policy violation.
    await context.addInitScript(() => {
      window.cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });
  }
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.location().url.endsWith('/favicon.ico')) page.errors.push(m.text());
  });
  page.promptAnswer = null;
  page.on('dialog', (d) => (d.type() === 'prompt' ? d.accept(page.promptAnswer ?? '') : d.accept()));
  return page;
}

async function clean(page, where) {
  const violations = await page.evaluate(() => window.cspViolations);
  if (violations.length) throw new Error(`${where}: CSP violations ${JSON.stringify(violations)}`);
  // Refusals the walk provokes (a wrong password, a member's 403) are logged
  // by the browser as failed loads; anything else is an error.
  const errors = page.errors.filter((e) => !e.startsWith('Failed to load resource'));
  if (errors.length) throw new Error(`${where}: page errors ${JSON.stringify(errors)}`);
  if (await page.evaluate(() => window.pwned)) throw new Error(`${where}: injected code ran`);
}

async function axe(page, where) {
  await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  }));
  if (result.violations.length) {
    const found = result.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
    throw new Error(`${where}: axe-core found ${found.join('; ')}`);
  }
  say(`ok axe ${where}`);
}

async function signIn(page, user) {
  await page.goto(`${BASE}/`);
  await page.waitForURL(`${BASE}/sign-in`);
  await axe(page, 'sign-in');
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill('wrong password!');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#sign-in-error:not(:empty)').waitFor();
  const refusal = await page.locator('#sign-in-error').textContent();
  await page.getByLabel('Password').fill(PASSWORD);
  await page.evaluate(() => { document.getElementById('sign-in-error').textContent = ''; });
  await page.getByRole('button', { name: 'Sign in' }).click();
  await Promise.race([
    page.waitForURL(`${BASE}/`),
    page.locator('#sign-in-error:not(:empty)').waitFor().then(async () => {
      const e = await page.locator('#sign-in-error').textContent();
      throw new Error(`sign-in refused: ${e} (after the wrong password: ${refusal})`);
    }),
  ]);
  say(`ok signed in ${user}`);
}

const status = (page, table, name) => page.locator(`#${table} tr[data-name="${name}"] .status .badge`).first();

async function waitStatus(page, table, name, want) {
  try {
    await page.waitForFunction(([t, n, w]) => {
      const b = document.querySelector(`#${t} tr[data-name="${n}"] .status .badge`);
      return b && b.textContent === w;
    }, [table, name, want], { timeout: TIMEOUT });
  } catch (e) {
    const row = await page.locator(`#${table} tr[data-name="${name}"]`).textContent().catch(() => 'no row');
    const toast = await page.locator('#toast').textContent();
    const live = await page.evaluate(() => document.body.dataset.live);
    const api = await page.evaluate(async (t) => {
      const r = await fetch(`/rpc/${t === 'clusters' ? 'AdminRpc/list_clusters' : 'WorkspaceRpc/list_workspaces'}`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-lapdev-csrf': '1' },
        body: '{"include_deleted":false}',
      });
      return r.text();
    }, table);
    throw new Error(`${name} never became ${want}: row "${row}", toast "${toast}", events ${live}, API says ${api}`);
  }
}

// ---- the admin ------------------------------------------------------------
const admin = await newPage();
await signIn(admin, process.env.LAPDEV_ADMIN);

// Connect a cluster and watch it turn connected, without reloading.
await admin.getByRole('link', { name: 'Clusters' }).click();
await admin.waitForURL(`${BASE}/clusters`);
await axe(admin, 'clusters');
await admin.evaluate(() => { window.notReloaded = true; });
await admin.getByLabel('Cluster name').fill('web');
await admin.getByRole('button', { name: 'Create and show the install command' }).click();
await admin.locator('#connect-result').waitFor({ state: 'visible' });
const command = await admin.locator('#connect-command').textContent();
if (command !== 'kubectl apply -f web-manager.yaml') throw new Error(`install command: ${command}`);
const href = await admin.locator('#manifest-download').getAttribute('href');
if (!href.startsWith('blob:')) throw new Error(`manifest link: ${href}`);
const token = (await admin.locator('#connect-token').textContent()).trim();
if (!token.startsWith('lapdev_ct_')) throw new Error(`token: ${token}`);
// This server's public URL is its loopback listener: the page says
// what that means for a manager in a cluster before the manifest is applied.
const warnings = await admin.locator('#connect-warnings li').allTextContents();
if (warnings.length !== 1 || !warnings[0].includes('own machine') || !warnings[0].includes('--public-url')) {
  throw new Error(`manifest warnings: ${JSON.stringify(warnings)}`);
}
await axe(admin, 'clusters-connected');
say('ok manifest warnings');
await waitStatus(admin, 'clusters', 'web', 'pending');
say(`token ${token}`);
await waitStatus(admin, 'clusters', 'web', 'connected');
await admin.locator('#clusters tr[data-name="web"] meter').first().waitFor();
if (!(await admin.evaluate(() => window.notReloaded))) throw new Error('the clusters page reloaded');
say('ok cluster connected live');
await admin.screenshot({ path: `${SHOTS}/clusters-1280.png` });

// The cluster's page: a second token, shown once, then revoked (the first
// one, which the manager uses, stays live).
await admin.getByRole('link', { name: 'web', exact: true }).click();
await admin.waitForURL(`${BASE}/clusters/web`);
await axe(admin, 'cluster');
const firstToken = await admin.locator('#tokens tbody tr').first().getAttribute('data-id');
await admin.getByLabel('Token name').fill('rotated');
await admin.getByRole('button', { name: 'Create token' }).click();
await admin.locator('#token-result').waitFor({ state: 'visible' });
const second = (await admin.locator('#token-secret').textContent()).trim();
const tokenWarnings = await admin.locator('#token-warnings li').allTextContents();
if (!tokenWarnings.some((w) => w.includes('own machine'))) {
  throw new Error(`token manifest warnings: ${JSON.stringify(tokenWarnings)}`);
}
if (!second.startsWith('lapdev_ct_') || second === token) throw new Error(`new token: ${second}`);
if (!(await admin.locator('#token-manifest').getAttribute('href')).startsWith('blob:')) throw new Error('no manifest link');
await admin.getByRole('button', { name: 'Revoke token rotated' }).click();
await admin.waitForFunction(() => [...document.querySelectorAll('#tokens tbody tr')]
  .some((r) => r.querySelector('th').textContent === 'rotated' && r.querySelector('.badge').textContent === 'revoked'));
const firstState = await admin.locator(`#tokens tr[data-id="${firstToken}"] .badge`).textContent();
if (firstState !== 'live') throw new Error(`the manager's token is ${firstState}`);
say('ok cluster tokens');
// Its scheduling settings: set an architecture, then clear it again (the
// double's nodes carry none, and the walk's workspaces must still be placed).
async function saveArch(arch) {
  await admin.getByLabel('Architecture (empty: any)').fill(arch);
  // Saved, the page reloads with the settings as the server now has them.
  await Promise.all([admin.waitForEvent('load'), admin.getByRole('button', { name: 'Save scheduling' }).click()]);
  return admin.locator('#placement').textContent();
}
if (!(await saveArch('arm64')).includes('arm64')) throw new Error('the architecture was not saved');
if ((await saveArch('')).includes('arm64')) throw new Error('the architecture was not cleared');
await clean(admin, 'cluster');
say('ok cluster scheduling');

// Workspaces: a validation error beside its field, then create and watch.
await admin.getByRole('link', { name: 'Workspaces' }).click();
await admin.waitForURL(`${BASE}/`);
await axe(admin, 'workspaces');
await admin.evaluate(() => { window.notReloaded = true; });
await admin.getByLabel('Name').fill('Bad Name');
await admin.getByRole('button', { name: 'Create' }).click();
await admin.locator('#ws-name-error:not(:empty)').waitFor();
if ((await admin.locator('#ws-name').getAttribute('aria-invalid')) !== 'true') throw new Error('name not marked invalid');
await admin.getByLabel('Name').fill('hello');
await admin.getByLabel('CPU (cores)').fill('0');
await admin.getByRole('button', { name: 'Create' }).click();
await admin.locator('#ws-cpu-error:not(:empty)').waitFor();
if (await admin.locator('#ws-name-error').textContent()) throw new Error('a stale error stayed');
say('ok validation errors beside their fields');
await admin.getByLabel('CPU (cores)').fill('0.5');
await admin.getByLabel('Memory (GiB)').fill('1');
await admin.getByLabel('Storage (GiB)').fill('1');
await admin.getByRole('button', { name: 'Create' }).click();
await admin.locator('#workspaces tr[data-name="hello"]').waitFor();
await waitStatus(admin, 'workspaces', 'hello', 'running');
if (!(await admin.evaluate(() => window.notReloaded))) throw new Error('the workspaces page reloaded');
say('ok workspace running live');

// Its terminal: a command runs in the workspace (the double runs it as a
// local process on a pseudo-terminal) and its output comes back; a narrower
// window resizes the terminal; the shell's exit is shown.
await admin.goto(`${BASE}/workspaces/hello`);
await admin.getByRole('link', { name: 'Open a terminal' }).click();
await admin.waitForURL(`${BASE}/workspaces/hello/terminal`);
await admin.waitForFunction(() => ['open', 'refused', 'failed', 'closed', 'exited'].includes(document.body.dataset.terminal));
if ((await admin.evaluate(() => document.body.dataset.terminal)) !== 'open') {
  throw new Error(`terminal: ${await admin.locator('#terminal-status').textContent()}`);
}
const screen = () => admin.locator('#terminal .xterm-rows').textContent();
async function run(command, want) {
  await admin.locator('#terminal').click();
  await admin.keyboard.type(command);
  await admin.keyboard.press('Enter');
  try {
    await admin.waitForFunction((w) => new RegExp(w).test(document.querySelector('#terminal .xterm-rows').textContent), want.source);
  } catch (e) {
    throw new Error(`terminal never showed ${want}: ${await screen()} (${await admin.locator('#terminal-status').textContent()})`);
  }
  return (await screen()).match(want);
}
const marker = `m${Math.floor(Math.random() * 1e9)}`;
await run(`echo ${marker}-$((6*7))`, new RegExp(`${marker}-42`));
await axe(admin, 'terminal');
say('ok terminal runs a command');
const wide = Number((await run('echo cols=$(stty size | cut -d" " -f2)', /cols=(\d+)/))[1]);
await admin.screenshot({ path: `${SHOTS}/terminal-1280.png` });
await admin.setViewportSize({ width: 390, height: 844 });
const narrow = Number((await run('echo narrow=$(stty size | cut -d" " -f2)', /narrow=(\d+)/))[1]);
if (!(narrow < wide)) throw new Error(`the terminal was ${wide} columns wide at 1280 px and ${narrow} at 390 px`);
await admin.setViewportSize({ width: 1280, height: 800 });
say('ok terminal resizes');
await admin.locator('#terminal').click();
await admin.keyboard.type('exit 3');
await admin.keyboard.press('Enter');
await admin.waitForFunction(() => document.body.dataset.terminal === 'exited');
const ended = await admin.locator('#terminal-status').textContent();
if (!ended.includes('code 3')) throw new Error(`exit shown as ${ended}`);
await admin.locator('#terminal-again').waitFor({ state: 'visible' });
await clean(admin, 'terminal');
say('ok terminal exit shown');
await admin.goto(`${BASE}/`);
await admin.evaluate(() => { window.notReloaded = true; });

// A hostile image name stays text.
await admin.getByLabel('Name').fill('xss');
await admin.getByLabel('Image').fill(HOSTILE);
await admin.getByRole('button', { name: 'Create' }).click();
await admin.locator('#workspaces tr[data-name="xss"]').waitFor();
const shown = await admin.locator('#workspaces tr[data-name="xss"] .image').textContent();
if (shown !== HOSTILE) throw new Error(`image shown as ${shown}`);
if (await admin.locator('main img').count()) throw new Error('an <img> got into the page');
await admin.reload();
if (await admin.locator('main img').count()) throw new Error('an <img> got into the rendered page');
await clean(admin, 'workspaces');
say('ok hostile text stays text');

// Stop, start, delete.
await admin.evaluate(() => { window.notReloaded = true; });
await admin.getByRole('button', { name: 'Stop hello' }).click();
await waitStatus(admin, 'workspaces', 'hello', 'stopped');
await admin.getByRole('button', { name: 'Start hello' }).click();
await waitStatus(admin, 'workspaces', 'hello', 'running');
say('ok stop and start');
await admin.screenshot({ path: `${SHOTS}/workspaces-1280.png` });
await admin.setViewportSize({ width: 390, height: 844 });
await admin.screenshot({ path: `${SHOTS}/workspaces-390.png`, fullPage: true });
await admin.setViewportSize({ width: 1280, height: 800 });
await admin.getByRole('button', { name: 'Delete hello' }).click();
await admin.locator('#workspaces tr[data-name="hello"]').waitFor({ state: 'detached' });
if (!(await admin.evaluate(() => window.notReloaded))) throw new Error('the page reloaded');
say('ok delete');

await admin.goto(`${BASE}/workspaces/xss`);
await axe(admin, 'workspace');
await admin.goto(`${BASE}/connect`);
await axe(admin, 'connect');
await admin.getByRole('link', { name: 'Users' }).click();
await admin.waitForURL(`${BASE}/users`);
await admin.locator(`#users tr[data-name="${process.env.LAPDEV_MEMBER}"]`).waitFor();
// An admin reads users and roles; changing them is for owners.
if (await admin.locator('#create-user, select[data-action="set-role"]').count()) throw new Error('an admin has owner controls');
await axe(admin, 'users');
await admin.setViewportSize({ width: 390, height: 844 });
await axe(admin, 'users at 390 px');
await admin.setViewportSize({ width: 1280, height: 800 });
await admin.getByRole('link', { name: 'Audit log' }).click();
await admin.waitForURL(`${BASE}/audit`);
await admin.locator('#audit tbody tr').first().waitFor();
await admin.getByLabel('Action (e.g. workspace.create)').fill('workspace.delete');
await admin.getByRole('button', { name: 'Filter' }).click();
await admin.waitForURL(/action=workspace.delete/);
const actions = await admin.locator('#audit tbody th').allTextContents();
if (!actions.length || actions.some((a) => a !== 'workspace.delete')) throw new Error(`the audit filter shows ${actions}`);
await axe(admin, 'audit');
say('ok users and audit pages');
await clean(admin, 'admin walk');
await admin.getByRole('button', { name: 'Sign out' }).click();
await admin.waitForURL(`${BASE}/sign-in`);
await admin.goto(`${BASE}/`);
await admin.waitForURL(`${BASE}/sign-in`);
say('ok signed out');

// ---- a member -------------------------------------------------------------
const member = await newPage();
await signIn(member, process.env.LAPDEV_MEMBER);
await member.getByLabel('Name').fill('mine');
await member.getByLabel('CPU (cores)').fill('0.5');
await member.getByLabel('Memory (GiB)').fill('1');
await member.getByLabel('Storage (GiB)').fill('1');
await member.getByRole('button', { name: 'Create' }).click();
await waitStatus(member, 'workspaces', 'mine', 'running');
const names = await member.locator('#workspaces tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.name));
if (JSON.stringify(names) !== '["mine"]') throw new Error(`a member sees ${names}`);
if (await member.getByRole('link', { name: 'Clusters' }).count()) throw new Error('a member has a clusters link');
const refused = await member.goto(`${BASE}/clusters`);
if (refused.status() !== 403) throw new Error(`a member got /clusters: ${refused.status()}`);
if (await member.locator('#connect-cluster, #clusters').count()) throw new Error('a member sees cluster controls');
const noUsers = await member.goto(`${BASE}/users`);
if (noUsers.status() !== 403) throw new Error(`a member got /users: ${noUsers.status()}`);
await member.setViewportSize({ width: 390, height: 844 });
await member.goto(`${BASE}/`);
await member.screenshot({ path: `${SHOTS}/member-390.png`, fullPage: true });
await clean(member, 'member walk');
say('ok member sees only their own');
// A member's own tokens, at 390 px: created (shown once), then revoked.
await member.getByRole('link', { name: 'Tokens' }).click();
await member.waitForURL(`${BASE}/tokens`);
await axe(member, 'tokens');
await member.getByLabel('Name').fill('laptop');
await member.getByRole('button', { name: 'Create token' }).click();
await member.locator('#token-result:not([hidden])').waitFor();
const secret = await member.locator('#token-secret').textContent();
if (!secret.startsWith('lapdev_')) throw new Error(`the new token reads ${secret}`);
await member.locator('#tokens tbody th', { hasText: 'laptop' }).waitFor();
await member.getByRole('button', { name: 'Revoke laptop' }).click();
await member.locator('#tokens .badge[data-status="revoked"]').waitFor();
await axe(member, 'tokens after revoke');
await member.reload();
if ((await member.content()).includes(secret)) throw new Error('the token is shown again');
await clean(member, 'member tokens');
say('ok member tokens');
await member.getByRole('button', { name: 'Sign out' }).click();
await member.waitForURL(`${BASE}/sign-in`);

// ---- two tabs of one browser share one event stream --------------------------
// The server's own count of open /events streams (a /metrics gauge).
async function openStreams() {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const m = text.match(/^lapdev_dashboard_event_streams (\S+)$/m);
  return m ? Number(m[1]) : 0;
}
async function waitStreams(want, when) {
  const deadline = Date.now() + TIMEOUT;
  let n = await openStreams();
  while (n !== want) {
    if (Date.now() > deadline) throw new Error(`${when}: the server has ${n} event streams open, not ${want}`);
    await new Promise((r) => setTimeout(r, 200));
    n = await openStreams();
  }
}
const live = (page) => page.waitForFunction(() => document.body.dataset.live === 'open');
// Everyone signed out: their streams ended.
await waitStreams(0, 'after signing out');
const tab1 = await newPage();
await signIn(tab1, process.env.LAPDEV_ADMIN);
const tab2 = await newPage(tab1.context());
await tab2.goto(`${BASE}/clusters/web`);
await tab1.goto(`${BASE}/clusters`);
await Promise.all([live(tab1), live(tab2)]);
const shared = await openStreams();
if (shared !== 1) throw new Error(`two tabs of one browser opened ${shared} event streams`);
say('ok two tabs share one event stream');
await tab2.locator('#cluster dd.cpu meter').waitFor();
await tab2.evaluate(() => { window.notReloaded = true; });
// A change made in one tab shows in both: the clusters list and the cluster's
// page (its facts and its workspaces).
await tab1.getByRole('button', { name: 'Cordon web' }).click();
await tab1.locator('#clusters tr[data-name="web"] .badge[data-status="cordoned"]').waitFor();
await tab2.locator('#cluster .status .badge[data-status="cordoned"]').waitFor();
const rpcIn = (page, method, args) => page.evaluate(async ([m, a]) => {
  const r = await fetch(`/rpc/${m}`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-lapdev-csrf': '1' }, body: JSON.stringify(a),
  });
  if (!r.ok) throw new Error(`${m}: ${r.status} ${await r.text()}`);
}, [method, args]);
await waitStatus(tab2, 'cluster-workspaces', 'mine', 'running');
await rpcIn(tab1, 'WorkspaceRpc/stop_workspace', { name: 'mine' });
await waitStatus(tab2, 'cluster-workspaces', 'mine', 'stopped');
say('ok both tabs update live');
await axe(tab2, 'cluster, live');
await clean(tab1, 'tab 1');
// The last tab keeps the stream: closing one tab does not end it.
await tab1.close({ runBeforeUnload: true });
await rpcIn(tab2, 'AdminRpc/set_cluster_cordoned', { name: 'web', cordoned: false });
await tab2.waitForFunction(() => !document.querySelector('#cluster .status .badge[data-status="cordoned"]'));
if (!(await tab2.evaluate(() => window.notReloaded))) throw new Error('the cluster page reloaded');
await waitStreams(1, 'after closing one of two tabs');
say('ok the last tab keeps the stream');
await tab2.setViewportSize({ width: 390, height: 844 });
await axe(tab2, 'cluster at 390 px');
// Providers: the list is the server's (no script needed); axe at both sizes.
await tab2.goto(`${BASE}/providers`);
await tab2.locator('#providers-empty').waitFor();
await axe(tab2, 'providers at 390 px');
await tab2.setViewportSize({ width: 1280, height: 800 });
await axe(tab2, 'providers');
await tab2.goto(`${BASE}/clusters`);
await tab2.setViewportSize({ width: 390, height: 844 });
await axe(tab2, 'clusters at 390 px');
await clean(tab2, 'tab 2');
say('ok providers and clusters pages');
await tab2.getByRole('button', { name: 'Sign out' }).click();
await tab2.waitForURL(`${BASE}/sign-in`);

await browser.close();
say('ok done');
