import { createReadStream, existsSync, realpathSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isLoopback } from '../config/index.js';
import { UserError } from '../errors.js';
import { RunWatcher, type RunEvent } from './run-dir.js';

/**
 * The run dashboard's server: one page, its own assets, the run as JSON and as
 * server-sent events, and the run directory's files. Nothing else: every other
 * path is a 404, every path under /run/ must resolve (symlinks followed) to a
 * regular file inside the run directory, and on a loopback bind a request must
 * name a loopback host (a page of another site that rebinds its DNS name to
 * 127.0.0.1 gets a 403, not the run).
 */

export interface ViewOptions {
  runDir: string;
  /** 0 picks a free port. */
  port: number;
  /** Address to bind; 127.0.0.1 unless told. */
  bind?: string;
  /** Required for a bind that is not loopback: the dashboard has no authentication. */
  allowRemote?: boolean;
  /** How often the run directory is read for changes. */
  pollMs?: number;
  /** Where the non-loopback warning goes. */
  warn?: (line: string) => void;
}

export interface ViewServer {
  url: string;
  port: number;
  /** Reads the run directory now and sends what changed (the launcher calls it as the job ends). */
  refresh(): void;
  close(): Promise<void>;
}

const ASSET_DIR = fileURLToPath(new URL('../../assets/view/', import.meta.url));
const require = createRequire(import.meta.url);
const UPLOT_DIR = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));

/** The only static files served, by URL path. */
const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: path.join(ASSET_DIR, 'index.html'), type: 'text/html; charset=utf-8' },
  '/assets/app.js': { file: path.join(ASSET_DIR, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/assets/app.css': { file: path.join(ASSET_DIR, 'app.css'), type: 'text/css; charset=utf-8' },
  '/assets/uPlot.iife.min.js': { file: path.join(UPLOT_DIR, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  '/assets/uPlot.min.css': { file: path.join(UPLOT_DIR, 'uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Content-Security-Policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
};

function send(res: ServerResponse, status: number, body: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...SECURITY_HEADERS });
  res.end(body);
}

function sendFile(req: IncomingMessage, res: ServerResponse, file: string, type: string): void {
  const size = statSync(file).size;
  res.writeHead(200, { 'Content-Type': type, 'Content-Length': size, 'Cache-Control': 'no-store', ...SECURITY_HEADERS });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
}

const TYPES: Record<string, string> = {
  '.json': 'application/json',
  '.jsonl': 'application/x-ndjson',
  '.log': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * The file a /run/ path names, or null: each segment decoded on its own and
 * refused if it is empty, `.` or `..`, or holds a slash, backslash or NUL;
 * then the real path (symlinks resolved) must lie inside the real run
 * directory and be a regular file.
 */
export function runFile(runDirReal: string, urlPath: string): string | null {
  const segments = urlPath.split('/');
  const parts: string[] = [];
  for (const raw of segments) {
    let s: string;
    try {
      s = decodeURIComponent(raw);
    } catch {
      return null;
    }
    if (s === '' || s === '.' || s === '..' || /[/\\\0]/.test(s)) return null;
    parts.push(s);
  }
  if (parts.length === 0) return null;
  let real: string;
  try {
    real = realpathSync(path.join(runDirReal, ...parts));
  } catch {
    return null;
  }
  if (!real.startsWith(runDirReal + path.sep)) return null;
  try {
    return statSync(real).isFile() ? real : null;
  } catch {
    return null;
  }
}

/** Host header values a loopback-bound server answers to. */
function loopbackHost(host: string | undefined, port: number): boolean {
  if (!host) return false;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host);
  if (!m) return false;
  return isLoopback(m[1]) && (m[2] === undefined || Number(m[2]) === port);
}

export async function startView(opts: ViewOptions): Promise<ViewServer> {
  const bind = opts.bind ?? '127.0.0.1';
  const loopback = isLoopback(bind);
  if (!loopback && !opts.allowRemote) {
    throw new UserError(`--bind ${bind} is not a loopback address: the dashboard has no authentication; add --allow-remote to serve this run to other machines`);
  }
  if (!existsSync(opts.runDir) || !statSync(opts.runDir).isDirectory()) throw new UserError(`${opts.runDir}: no such run directory`);
  const runDirReal = realpathSync(opts.runDir);
  const watcher = new RunWatcher(runDirReal);
  const clients = new Set<ServerResponse>();
  let port = opts.port;

  const push = (res: ServerResponse, e: RunEvent) => {
    res.write(`event: ${e.type}\ndata: ${JSON.stringify(e.type === 'snapshot' ? e.snapshot : e)}\n\n`);
  };
  const refresh = () => {
    const events = watcher.poll();
    for (const res of clients) for (const e of events) push(res, e);
  };

  const server = createServer((req, res) => {
    if (loopback && !loopbackHost(req.headers.host, port)) return send(res, 403, 'this dashboard answers only to a loopback host name\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, 'GET or HEAD only\n');
    }
    // The raw path, not a normalized URL: /run/../x must be refused here, not turned into /x.
    const rawPath = (req.url ?? '/').split('?')[0];
    const asset = ASSETS[rawPath];
    if (asset) return sendFile(req, res, asset.file, asset.type);
    if (rawPath === '/api/snapshot') return send(res, 200, JSON.stringify(watcher.snapshot()), 'application/json');
    if (rawPath === '/api/events') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive', ...SECURITY_HEADERS });
      // A client that reconnects starts from a whole snapshot: no event is ever assumed delivered.
      push(res, { type: 'snapshot', snapshot: watcher.snapshot() });
      clients.add(res);
      req.on('close', () => clients.delete(res));
      return;
    }
    if (rawPath.startsWith('/run/')) {
      const file = runFile(runDirReal, rawPath.slice('/run/'.length));
      if (file) return sendFile(req, res, file, TYPES[path.extname(file)] ?? 'application/octet-stream');
    }
    send(res, 404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new UserError(`--port ${opts.port}: the port is in use on ${bind}`) : err.code === 'EADDRNOTAVAIL' ? new UserError(`--bind ${bind}: not an address of this machine`) : err),
    );
    server.listen(opts.port, bind, () => resolve());
  });
  port = (server.address() as AddressInfo).port;
  if (!loopback) opts.warn?.(`warning: the dashboard is served on ${bind}:${port} to anyone who can reach it, without authentication`);
  const timer = setInterval(refresh, opts.pollMs ?? 500);
  timer.unref();
  const host = bind.includes(':') ? `[${bind}]` : bind === '0.0.0.0' ? '127.0.0.1' : bind;
  return {
    url: `http://${host}:${port}/`,
    port,
    refresh,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(timer);
        for (const res of clients) res.end();
        clients.clear();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
