/**
 * The prefix store in Redis, shared by every replica that names the same server: values are cache files,
 * written without expiry (eviction is Redis's: run it with `maxmemory` and `maxmemory-policy allkeys-lru`).
 *
 * Redis may be down, restarted or slow, and the server must not care: commands are never queued while
 * disconnected (they fail at once), the prefix cache bounds each call's wait (prefix-cache.ts), a
 * connection that stops answering for long is dropped (`socketTimeout`, which frees what was queued on
 * it), and the client reconnects in the background forever. The first failure is logged in one line,
 * and the reconnection in another.
 *
 * No `commandTimeout`, and a long `socketTimeout`: ioredis's timers fire after a forward pass that
 * blocked the event loop, before the reply waiting in the socket is read, and would fail commands (and
 * drop the connection) that Redis had answered in time.
 */
import type { Redis } from 'ioredis';
import { KiviError } from '../util/errors.js';
import type { PrefixStore } from './prefix-store.js';

export interface RedisStoreOptions {
  /** Most milliseconds one command may take. */
  timeoutMs: number;
  log?: (line: string) => void;
}

/** redis://[user:password@]HOST:PORT[/db] (or rediss://), checked; the description hides the password. */
export function parseRedisUrl(url: string): { url: string; description: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new KiviError(`--prefix-store must be a redis://HOST:PORT URL, got "${url}"`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new KiviError(`--prefix-store must be a redis:// or rediss:// URL, got "${url}"`);
  if (u.hostname === '') throw new KiviError(`--prefix-store "${url}" names no host`);
  if (u.pathname !== '' && u.pathname !== '/' && !/^\/\d+$/.test(u.pathname))
    throw new KiviError(`--prefix-store "${url}": the path must be a database number`);
  return { url, description: `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}` };
}

export class RedisStore implements PrefixStore {
  readonly description: string;
  private readonly client: Redis;
  /** A failure was logged and no reconnection since. */
  private down = false;

  /** A store on the Redis server at `url`; ioredis loads here, so only a server that names a store pays for it. */
  static async open(url: string, opts: RedisStoreOptions): Promise<RedisStore> {
    const { Redis } = await import('ioredis');
    return new RedisStore(Redis, url, opts);
  }

  private constructor(RedisClient: typeof Redis, url: string, opts: RedisStoreOptions) {
    const parsed = parseRedisUrl(url);
    this.description = parsed.description;
    const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    this.client = new RedisClient(parsed.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      socketTimeout: Math.max(10_000, 10 * opts.timeoutMs),
      connectTimeout: Math.max(5_000, 4 * opts.timeoutMs),
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
      protocol: 2,
      disableClientInfo: true,
    });
    this.client.on('error', (e: Error) => {
      if (this.down) return;
      this.down = true;
      log(`kivi: prefix store ${this.description}: ${e.message || 'unreachable'}; prefilling cold until it is back (reconnecting in the background)`);
    });
    this.client.on('ready', () => {
      if (this.down) log(`kivi: prefix store ${this.description}: connected`);
      this.down = false;
    });
  }

  get up(): boolean {
    return this.client.status === 'ready';
  }

  async has(keys: string[]): Promise<boolean[]> {
    const r = await this.client.pipeline(keys.map((k) => ['exists', k])).exec();
    if (!r) throw new Error('pipeline not run');
    return r.map(([err, n]) => {
      if (err) throw err;
      return n === 1;
    });
  }

  async get(key: string): Promise<Uint8Array | null> {
    const b = await this.client.getBuffer(key);
    return b === null ? null : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    await this.client.set(key, Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  }

  async delete(key: string): Promise<void> {
    await this.client.del(key);
  }

  async close(): Promise<void> {
    // disconnect(), not quit(): a stopped server would never answer QUIT.
    this.client.disconnect();
  }
}
