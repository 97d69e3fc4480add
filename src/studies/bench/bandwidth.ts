/**
 * The machine's memory-bandwidth bound for GEMV: read a buffer far larger than the last-level cache
 * with memchr (Buffer.indexOf of an absent byte, libc's vectorized read loop, ~the fastest read a
 * process can do) on `threads` threads at once, each on its own slice. Median of repeats, GB = 1e9 bytes.
 */
import { Worker } from 'node:worker_threads';
import { median, now } from './measure.js';

export interface BandwidthResult {
  /** Bytes read per repeat. */
  bytes: number;
  threads: number;
  repeats: number;
  /** Median read bandwidth, GB/s. */
  gbps: number;
}

export async function measureReadBandwidth(bytes: number, threads: number, repeats = 7): Promise<BandwidthResult> {
  const size = Math.floor(bytes / (4096 * threads)) * 4096 * threads;
  const sab = new SharedArrayBuffer(size);
  const all = Buffer.from(sab);
  all.fill(0x55); // touch every page: the zero page would make reads free
  const ctrlSab = new SharedArrayBuffer(12);
  const ctrl = new Int32Array(ctrlSab);
  const part = size / threads;
  const workerFile = new URL('./bandwidth-worker.js', import.meta.url);
  const workers: Worker[] = [];
  try {
    for (let i = 1; i < threads; i++) {
      const w = new Worker(workerFile, { workerData: { sab, ctrlSab, start: i * part, end: (i + 1) * part } });
      workers.push(w);
      await new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
    }
    const mine = all.subarray(0, part);
    const samples: number[] = [];
    for (let r = 0; r < repeats + 1; r++) {
      Atomics.store(ctrl, 1, 0);
      const t0 = now();
      Atomics.add(ctrl, 0, 1);
      Atomics.notify(ctrl, 0);
      if (mine.indexOf(0xaa) !== -1) throw new Error('bandwidth buffer corrupted');
      for (let done = Atomics.load(ctrl, 1); done < threads - 1; done = Atomics.load(ctrl, 1)) Atomics.wait(ctrl, 1, done, 1000);
      const dt = now() - t0;
      if (r > 0) samples.push(dt); // the first round warms up
    }
    return { bytes: size, threads, repeats, gbps: size / median(samples) / 1e9 };
  } finally {
    Atomics.store(ctrl, 2, 1);
    Atomics.add(ctrl, 0, 1);
    Atomics.notify(ctrl, 0);
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
