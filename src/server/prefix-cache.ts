/**
 * The server's prefix cache. Prompts are cut into blocks of B tokens; a request with the cache on
 * prefills its prompt in chunks that end on block boundaries (and on --prefill-chunk's), and after each
 * whole block its cache is stored as a cache file under a key naming the model's fingerprint, the spec,
 * the back end, the chunk grids and the SHA-256 of the token prefix. A later request — on this replica or
 * any other sharing the store — restores the longest stored prefix of its prompt and prefills only the
 * rest. The chunk boundaries depend on positions only, so a restored cache continued with the rest is
 * bit for bit the cache the request would have built without the store.
 *
 * The store is never trusted or waited on for long: every call is bounded by a timeout, a failure or a
 * timeout is a miss (a cold prefill), an entry that fails decodeCache's checks (checksum, model, spec,
 * tokens) is deleted and counted, and writes are fire-and-forget within a bound on the bytes in flight.
 * The engine's only wait is reading the cache's pages (cache.save()) after a block's chunk.
 */
import { createHash } from 'node:crypto';
import { CACHE_FORMAT_VERSION, type DecodedCache, decodeCache, encodeImage, tokenBytes } from '../cache/file.js';
import { type CacheSpec, formatKvSpec } from '../cache/spec.js';
import type { CacheImage } from '../cache/types.js';
import type { Sequence } from '../engine/batch.js';
import type { AttnShape } from '../kernels/types.js';
import { Counter, Histogram, type Registry } from './metrics.js';
import { MemoryStore, type PrefixStore } from './prefix-store.js';

export interface PrefixCacheOptions {
  store: PrefixStore;
  /** Tokens per block. */
  block: number;
  /** Every chunk grid prompts are prefilled on (the block's included): part of the key. */
  grids: number[];
  /** The model's fingerprint, the spec, the cache shape, and the back end (results are exact per back end). */
  model: string;
  spec: CacheSpec;
  shape: AttnShape;
  backend: string;
  /** Most milliseconds one store call may take. */
  timeoutMs: number;
  /** Most bytes of writes in flight (images read, files encoded, values sent); more are skipped. */
  maxPendingBytes: number;
}

/** What a lookup found, and what the request's prefill may add to the store. */
export interface Lookup {
  /** The longest stored prefix (at most the prompt's length − 1), or null. */
  image: DecodedCache | null;
  /** Per whole block of the prompt: its key and whether the store holds it. */
  keys: string[];
  held: boolean[];
  /** Per whole block: the SHA-256 of the token prefix it ends (what its file names). */
  hashes: string[];
}

export class TimeoutError extends Error {}

/** Granularity of store timeouts (see bounded()). */
const TICK_MS = 25;

const FETCH_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export class PrefixCache {
  readonly keyPrefix: string;
  hits = 0;
  misses = 0;
  tokensReused = 0;
  bytesFetched = 0;
  bytesStored = 0;
  entriesStored = 0;
  tokensStored = 0;
  corruptDropped = 0;
  writesSkipped = 0;
  /** Store failures by operation and reason (timeout, unavailable, error). */
  readonly errors = new Counter();
  /** A lookup's time with the store: which blocks it holds, and the fetch and check of a hit. */
  readonly lookupSeconds = new Histogram(FETCH_BUCKETS);
  /** A hit's fetch and decode (the value's transfer and its checksum). */
  readonly fetchSeconds = new Histogram(FETCH_BUCKETS);
  private pendingBytes = 0;
  private readonly writing = new Set<string>();
  private readonly id: { model: string; spec: CacheSpec; shape: AttnShape };

  constructor(readonly opts: PrefixCacheOptions) {
    const grids = [...new Set(opts.grids)].sort((a, b) => a - b).join(',');
    this.keyPrefix = `kivi:prefix:v${CACHE_FORMAT_VERSION}:${opts.model}:${formatKvSpec(opts.spec)}:${opts.backend}:chunks=${grids}:`;
    this.id = { model: opts.model, spec: opts.spec, shape: opts.shape };
  }

  get store(): PrefixStore {
    return this.opts.store;
  }

  /** Bytes of writes in flight. */
  get pending(): number {
    return this.pendingBytes;
  }

  /** Keys and token hashes of every whole block of the prompt (hashes chained: one pass over the ids). */
  blocks(ids: number[]): { keys: string[]; hashes: string[] } {
    const B = this.opts.block;
    const h = createHash('sha256');
    const hashes: string[] = [];
    for (let k = 0; (k + 1) * B <= ids.length; k++) {
      h.update(tokenBytes(ids.slice(k * B, (k + 1) * B)));
      hashes.push(h.copy().digest('hex'));
    }
    return { keys: hashes.map((x) => this.keyPrefix + x), hashes };
  }

  /** Find and fetch the longest stored prefix of the prompt; never throws (a failure is a miss). */
  async lookup(ids: number[]): Promise<Lookup> {
    const { keys, hashes } = this.blocks(ids);
    const found: Lookup = { image: null, keys, held: keys.map(() => false), hashes };
    // Blocks that leave at least one prompt token to prefill (its logits start generation).
    const usable = Math.floor((ids.length - 1) / this.opts.block);
    if (keys.length === 0) return found;
    const store = this.opts.store;
    if (!store.up) {
      this.errors.inc({ op: 'lookup', reason: 'unavailable' });
      if (usable > 0) this.misses++;
      return found;
    }
    const t0 = performance.now();
    try {
      found.held = await this.bounded(store.has(keys));
    } catch (e) {
      this.failed('lookup', e);
      if (usable > 0) this.misses++;
      return found;
    }
    let k = usable;
    while (k > 0 && !found.held[k - 1]) k--;
    if (k === 0) {
      if (usable > 0) this.misses++;
      this.lookupSeconds.observe((performance.now() - t0) / 1000);
      return found;
    }
    const t1 = performance.now();
    const key = keys[k - 1]!;
    let bytes: Uint8Array | null;
    try {
      bytes = await this.bounded(store.get(key));
    } catch (e) {
      this.failed('get', e);
      this.misses++;
      return found;
    }
    if (bytes === null) {
      // Evicted since has().
      found.held[k - 1] = false;
      this.misses++;
      return found;
    }
    try {
      const image = await decodeCache(bytes, { ...this.id, tokens: hashes[k - 1] });
      if (image.length !== k * this.opts.block) throw new Error(`it holds ${image.length} tokens, not ${k * this.opts.block}`);
      found.image = image;
    } catch {
      // Corrupt, foreign or wrongly keyed: drop it; this request's prefill stores it again.
      this.corruptDropped++;
      found.held[k - 1] = false;
      this.bounded(store.delete(key)).catch((e) => this.failed('delete', e));
      this.misses++;
      return found;
    }
    const t2 = performance.now();
    this.hits++;
    this.tokensReused += found.image.length;
    this.bytesFetched += bytes.byteLength;
    this.fetchSeconds.observe((t2 - t1) / 1000);
    this.lookupSeconds.observe((t2 - t0) / 1000);
    return found;
  }

  /** The engine's hook for a request: after each whole block's chunk, store the cache unless the store has it. */
  afterChunk(found: Lookup): (seq: Sequence, length: number) => Promise<void> {
    return async (seq, length) => {
      const B = this.opts.block;
      if (length % B !== 0 || length / B > found.keys.length) return;
      const j = length / B - 1;
      const key = found.keys[j]!;
      if (found.held[j] || this.writing.has(key)) return;
      if (!this.opts.store.up) {
        this.errors.inc({ op: 'set', reason: 'unavailable' });
        return;
      }
      const estimate = seq.cache.allocatedBytes();
      if (this.pendingBytes + estimate > this.opts.maxPendingBytes) {
        this.writesSkipped++;
        return;
      }
      this.writing.add(key);
      this.pendingBytes += estimate;
      let ok = false;
      try {
        const image = await seq.cache.save();
        // Cancelled while its pages were read: they may have been freed and reused.
        if (seq.done) return;
        ok = true;
        void this.write(key, found.hashes[j]!, image, estimate, length);
      } finally {
        if (!ok) this.release(key, estimate);
      }
    };
  }

  /**
   * Encode and send one entry, off the engine loop. Its bytes count as pending until the store's call
   * itself settles, not when it times out: a stalled connection holds them until the client drops it.
   */
  private async write(key: string, hash: string, image: CacheImage, estimate: number, tokens: number): Promise<void> {
    let held = estimate;
    let sent: Promise<void> | null = null;
    try {
      const file = await encodeImage(image, { ...this.id, tokens: hash });
      this.pendingBytes += file.byteLength - held;
      held = file.byteLength;
      sent = this.opts.store.set(key, file);
      await this.bounded(sent);
      this.bytesStored += file.byteLength;
      this.entriesStored++;
      this.tokensStored += tokens;
    } catch (e) {
      this.failed('set', e);
    } finally {
      if (sent)
        sent.then(
          () => this.release(key, held),
          () => this.release(key, held),
        );
      else this.release(key, held);
    }
  }

  private release(key: string, bytes: number): void {
    this.writing.delete(key);
    this.pendingBytes -= bytes;
  }

  private failed(op: string, e: unknown): void {
    const reason = e instanceof TimeoutError ? 'timeout' : !this.opts.store.up ? 'unavailable' : 'error';
    this.errors.inc({ op, reason });
  }

  /**
   * The store's promise, or a TimeoutError once the store has had timeoutMs to answer. Forward passes
   * block the event loop for up to seconds, during which no reply can be read: that time is not the
   * store's. The wait is counted in ticks, each counting at most two tick lengths however late it runs,
   * and a reply that arrived during a blocked stretch is read (I/O runs after timers) before the next.
   */
  private bounded<T>(p: Promise<T>): Promise<T> {
    const limit = this.opts.timeoutMs;
    return new Promise<T>((resolve, reject) => {
      let waited = 0;
      let last = performance.now();
      let timer: NodeJS.Timeout;
      const tick = () => {
        const now = performance.now();
        waited += Math.min(now - last, 2 * TICK_MS);
        last = now;
        if (waited >= limit) reject(new TimeoutError(`store call took more than ${limit} ms`));
        else timer = setTimeout(tick, Math.min(TICK_MS, limit - waited));
      };
      timer = setTimeout(tick, Math.min(TICK_MS, limit));
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  close(): Promise<void> {
    return this.opts.store.close();
  }

  /** The prefix cache's metrics. */
  register(reg: Registry): void {
    const store = this.opts.store;
    reg.counter('kivi_prefix_hits_total', 'Requests that restored a stored prefix of their prompt.', () => this.hits);
    reg.counter(
      'kivi_prefix_misses_total',
      'Requests with a whole block before their last token that found none stored (or could not fetch it).',
      () => this.misses,
    );
    reg.counter('kivi_prefix_tokens_reused_total', 'Prompt tokens restored from the store instead of prefilled.', () => this.tokensReused);
    reg.counter('kivi_prefix_bytes_fetched_total', 'Bytes of cache files fetched for hits.', () => this.bytesFetched);
    reg.counter('kivi_prefix_bytes_stored_total', 'Bytes of cache files written to the store.', () => this.bytesStored);
    reg.counter('kivi_prefix_entries_stored_total', 'Cache files written to the store.', () => this.entriesStored);
    reg.counter('kivi_prefix_tokens_stored_total', 'Tokens held by the cache files written (a prefix of n blocks counts n·B).', () => this.tokensStored);
    reg.counter(
      'kivi_prefix_corrupt_dropped_total',
      'Stored entries that failed their checks (checksum, model, spec, tokens) and were deleted.',
      () => this.corruptDropped,
    );
    reg.counter('kivi_prefix_writes_skipped_total', 'Blocks not stored because the writes in flight were at their bound.', () => this.writesSkipped);
    reg.counter('kivi_prefix_store_errors_total', 'Store calls that failed, by operation and reason (timeout, unavailable, error).', () =>
      this.errors.samples(),
    );
    reg.gauge('kivi_prefix_store_up', 'Whether the prefix store is reachable (1) or not (0).', () => (store.up ? 1 : 0));
    reg.gauge('kivi_prefix_write_bytes_pending', 'Bytes of prefix writes in flight.', () => this.pendingBytes);
    if (store instanceof MemoryStore) {
      reg.gauge('kivi_prefix_store_bytes', 'Bytes held by the in-process prefix store.', () => store.bytes);
      reg.gauge('kivi_prefix_store_entries', 'Entries held by the in-process prefix store.', () => store.size);
      reg.counter('kivi_prefix_store_evictions_total', 'Entries the in-process store evicted (least recently used first).', () => store.evictions);
    }
    reg.histogram(
      'kivi_prefix_lookup_seconds',
      "A lookup's time with the store (which blocks it holds; for a hit, the fetch and checks too).",
      this.lookupSeconds,
    );
    reg.histogram('kivi_prefix_fetch_seconds', "A hit's fetch and checks (transfer, checksum).", this.fetchSeconds);
  }
}
