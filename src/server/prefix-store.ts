/**
 * Where the server's prefix cache keeps its entries (cache files, keyed by model, spec, chunking and
 * token prefix): a store in this process (LRU by bytes), or Redis shared by replicas (redis-store.ts).
 * The prefix cache (prefix-cache.ts) bounds every call with a timeout and treats any failure as a miss.
 */
import { formatBytes } from '../util/format.js';

/** Tokens per prefix-cache block unless --prefix-block says otherwise. */
export const DEFAULT_PREFIX_BLOCK = 256;

export interface PrefixStore {
  /** For logs: "memory (512 MiB)", "redis://127.0.0.1:6379". */
  readonly description: string;
  /** False while the store cannot be reached: calls then fail at once. */
  readonly up: boolean;
  /** Which of the keys are held (one round trip). */
  has(keys: string[]): Promise<boolean[]>;
  get(key: string): Promise<Uint8Array | null>;
  set(key: string, value: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

/** Entries in this process, least recently used evicted first once their bytes pass the capacity. */
export class MemoryStore implements PrefixStore {
  readonly up = true;
  /** Map order is use order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Uint8Array>();
  private held = 0;
  evictions = 0;

  constructor(readonly capacityBytes: number) {}

  get description(): string {
    return `in-process (${formatBytes(this.capacityBytes, 0)})`;
  }

  /** Bytes of the entries held. */
  get bytes(): number {
    return this.held;
  }

  get size(): number {
    return this.entries.size;
  }

  async has(keys: string[]): Promise<boolean[]> {
    return keys.map((k) => this.entries.has(k));
  }

  async get(key: string): Promise<Uint8Array | null> {
    const v = this.entries.get(key);
    if (v === undefined) return null;
    this.entries.delete(key);
    this.entries.set(key, v);
    return v;
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    this.remove(key);
    // An entry larger than the whole store is not kept (it would evict everything and then itself).
    if (value.byteLength > this.capacityBytes) return;
    this.entries.set(key, value);
    this.held += value.byteLength;
    for (const [k, v] of this.entries) {
      if (this.held <= this.capacityBytes) break;
      this.entries.delete(k);
      this.held -= v.byteLength;
      this.evictions++;
    }
  }

  async delete(key: string): Promise<void> {
    this.remove(key);
  }

  private remove(key: string): void {
    const v = this.entries.get(key);
    if (v === undefined) return;
    this.entries.delete(key);
    this.held -= v.byteLength;
  }

  async close(): Promise<void> {
    this.entries.clear();
    this.held = 0;
  }
}
