/**
 * Server replicas and a Redis server as child processes, for `kivi bench prefix` and the tests: each
 * replica is `kivi serve --port 0` (its URL read from its start-up line), each Redis a `redis-server`
 * on a free loopback port without persistence. Everything started here is stopped by its own handle.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KiviError } from '../../util/errors.js';

/** The compiled CLI beside this module. */
export const CLI_MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../cli/main.js');

export interface Replica {
  url: string;
  child: ChildProcess;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** SIGTERM, then wait for it to exit (SIGKILL after 10 s). */
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (free when asked: another process may take it before it is used). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited(child);
  clearTimeout(t);
}

/** `kivi serve ARGS --port 0`; resolves once it listens. */
export async function startReplica(args: string[], timeoutMs = 120_000): Promise<Replica> {
  const child = spawn(process.execPath, [CLI_MAIN, 'serve', ...args, '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8');
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new KiviError(`kivi serve did not start within ${timeoutMs / 1000} s: ${err.trim()}`));
    }, timeoutMs);
    child.stderr!.on('data', (d: string) => {
      err += d;
      const m = / at (http:\/\/\S+) \(/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new KiviError(`kivi serve exited (${code}) before listening: ${err.trim()}`));
    });
  });
  return { url, child, stderr: () => err, stop: () => stopChild(child) };
}

export interface RedisServer {
  port: number;
  url: string;
  child: ChildProcess;
  /** SIGSTOP / SIGCONT: a server that accepts connections and answers nothing. */
  pause(): void;
  resume(): void;
  /** SIGKILL, no goodbye. */
  kill(): Promise<void>;
  stop(): Promise<void>;
}

/** One RESP command's first reply line, or null if nothing answers within ms. */
export function redisCommand(port: number, args: string[], ms = 1000): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const done = (v: string | null) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(null), ms);
    let buf = '';
    s.on('error', () => done(null));
    s.on('data', (d) => {
      buf += d.toString('latin1');
      const i = buf.indexOf('\r\n');
      if (i >= 0) done(buf.slice(0, i));
    });
    s.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
  });
}

/** redis-server on a loopback port (a free one by default), no RDB or AOF, LRU eviction at `maxmemory`. */
export async function startRedis(opts: { port?: number; maxmemory?: string } = {}): Promise<RedisServer> {
  const port = opts.port ?? (await freePort());
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--maxmemory',
      opts.maxmemory ?? '512mb',
      '--maxmemory-policy',
      'allkeys-lru',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (e) => reject(new KiviError(`cannot run redis-server: ${e.message} (install Debian's redis-server package)`)));
    child.once('exit', (code) => reject(new KiviError(`redis-server exited (${code}): ${err.trim()}`)));
  });
  failed.catch(() => {});
  const t0 = Date.now();
  for (;;) {
    if ((await Promise.race([redisCommand(port, ['PING'], 500), failed])) === '+PONG') break;
    if (Date.now() - t0 > 20_000) {
      await stopChild(child, 'SIGKILL');
      throw new KiviError(`redis-server on port ${port} did not answer within 20 s`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    child,
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
    kill: () => stopChild(child, 'SIGKILL'),
    stop: async () => {
      child.kill('SIGCONT');
      await stopChild(child);
    },
  };
}
