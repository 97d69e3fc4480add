/**
 * The machine's memory-bandwidth bound for GEMV: read a buffer far larger than the last-level cache
 * with memchr (Buffer.indexOf of an absent byte: libc's vectorized read loop, about the fastest read a
 * process can do) on `threads` threads at once, each on its own slice. GB = 1e9 bytes.
 */
import { Worker } from 'node:worker_threads';
import { median } from '../numbers.js';
import { now } from './measure.js';

export interface BandwidthResult {
  /** Bytes read per sample. */
  bytes: number;
  threads: number;
  repeats: number;
  /** Median read bandwidth, GB/s. */
  gbps: number;
}

/** A buffer and its reader threads, kept ready so samples can interleave with other measurements. */
export class ReadBandwidthProbe {
  private constructor(
    readonly bytes: number,
    readonly threads: number,
    private readonly mine: Buffer,
    private readonly ctrl: Int32Array,
    private readonly workers: Worker[],
  ) {}

  /** bytes is rounded down to whole 4 KiB pages per thread. */
  static async start(bytes: number, threads: number): Promise<ReadBandwidthProbe> {
    const size = Math.floor(bytes / (4096 * threads)) * 4096 * threads;
    const sab = new SharedArrayBuffer(size);
    Buffer.from(sab).fill(0x55); // touch every page: untouched pages would read as the shared zero page
    const ctrlSab = new SharedArrayBuffer(12);
    const part = size / threads;
    const workers: Worker[] = [];
    const probe = new ReadBandwidthProbe(size, threads, Buffer.from(sab, 0, part), new Int32Array(ctrlSab), workers);
    try {
      for (let i = 1; i < threads; i++) {
        const w = new Worker(new URL('./bandwidth-worker.js', import.meta.url), {
          workerData: { sab, ctrlSab, start: i * part, end: (i + 1) * part },
          execArgv: [],
        });
        workers.push(w);
        await new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('error', reject);
        });
      }
    } catch (e) {
      await probe.close();
      throw e;
    }
    return probe;
  }

  /** One read of the whole buffer by all threads; returns its seconds. */
  sample(): number {
    const { ctrl } = this;
    Atomics.store(ctrl, 1, 0);
    const t0 = now();
    Atomics.add(ctrl, 0, 1);
    Atomics.notify(ctrl, 0);
    if (this.mine.indexOf(0xaa) !== -1) throw new Error('bandwidth buffer corrupted');
    for (let done = Atomics.load(ctrl, 1); done < this.threads - 1; done = Atomics.load(ctrl, 1)) Atomics.wait(ctrl, 1, done, 1000);
    return now() - t0;
  }

  async close(): Promise<void> {
    Atomics.store(this.ctrl, 2, 1);
    Atomics.add(this.ctrl, 0, 1);
    Atomics.notify(this.ctrl, 0);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Median read bandwidth over `repeats` samples after one warm-up sample. */
export async function measureReadBandwidth(bytes: number, threads: number, repeats = 7): Promise<BandwidthResult> {
  const probe = await ReadBandwidthProbe.start(bytes, threads);
  try {
    probe.sample();
    const samples = Array.from({ length: repeats }, () => probe.sample());
    return { bytes: probe.bytes, threads, repeats, gbps: probe.bytes / median(samples) / 1e9 };
  } finally {
    await probe.close();
  }
}
