/**
 * GPU time per kernel, from timestamp queries: while a profile runs, every dispatch gets a compute pass
 * of its own whose start and end the GPU stamps, and the stamps of each submitted batch are read back
 * when it has run. A diagnostic (`kivi bench generate --gpu-profile`): one pass per dispatch adds a
 * little to each, so a profiled step's wall time is not the step's true time; the kernels' own times
 * are what it is for.
 */
import { KiviError } from '../../util/errors.js';

/** One kernel's share of a profile: its dispatches and their summed GPU time. */
export interface KernelTime {
  /** The kernel's name without its shape suffix (`attend2`, `jobs2`, `gemv`, …). */
  kernel: string;
  dispatches: number;
  /** Summed GPU nanoseconds from each dispatch's start to its end. */
  ns: number;
}

export interface GpuProfile {
  kernels: KernelTime[];
  /** GPU nanoseconds from the first dispatch's start to the last one's end. */
  spanNs: number;
}

/** The stamps of one submitted batch: two a dispatch, named by the kernels that ran. */
interface Batch {
  set: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
  names: string[];
}

export class GpuProfiler {
  private readonly free: Batch[] = [];
  private current: Batch | null = null;
  private readonly reads: Promise<void>[] = [];
  private readonly byKernel = new Map<string, KernelTime>();
  private first = Number.POSITIVE_INFINITY;
  private last = Number.NEGATIVE_INFINITY;
  private failure: Error | null = null;

  /** `perBatch`: the most dispatches a submitted batch holds. */
  constructor(
    private readonly device: GPUDevice,
    private readonly perBatch: number,
  ) {
    if (!device.features.has('timestamp-query')) throw new KiviError('--gpu-profile: this WebGPU adapter offers no timestamp queries');
  }

  /** The timestamp writes of the next dispatch's pass. */
  passStamps(kernel: string): GPUComputePassTimestampWrites {
    this.current ??= this.free.pop() ?? this.batch();
    const b = this.current;
    const i = b.names.length;
    if (i >= this.perBatch) throw new Error('webgpu profile: more dispatches in a batch than it was sized for');
    b.names.push(kernel.split(':')[0]!);
    return { querySet: b.set, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Before a batch is submitted: copy its stamps where the host can read them. */
  resolve(encoder: GPUCommandEncoder): void {
    const b = this.current;
    if (!b) return;
    const n = 2 * b.names.length;
    encoder.resolveQuerySet(b.set, 0, n, b.resolve, 0);
    encoder.copyBufferToBuffer(b.resolve, 0, b.read, 0, n * 8);
  }

  /** After the batch is submitted: read its stamps once it has run. */
  submitted(): void {
    const b = this.current;
    if (!b) return;
    this.current = null;
    const n = 2 * b.names.length;
    this.reads.push(
      b.read.mapAsync(GPUMapMode.READ, 0, n * 8).then(
        () => {
          const t = new BigInt64Array(b.read.getMappedRange(0, n * 8).slice(0));
          b.read.unmap();
          for (let i = 0; i < b.names.length; i++) {
            const s = Number(t[2 * i]!),
              e = Number(t[2 * i + 1]!);
            const k = this.byKernel.get(b.names[i]!) ?? { kernel: b.names[i]!, dispatches: 0, ns: 0 };
            k.dispatches++;
            k.ns += Math.max(0, e - s);
            this.byKernel.set(k.kernel, k);
            if (s < this.first) this.first = s;
            if (e > this.last) this.last = e;
          }
          b.names.length = 0;
          this.free.push(b);
        },
        (e: unknown) => {
          this.failure ??= e as Error;
          this.free.push(b); // destroyed with the rest
        },
      ),
    );
  }

  /** Every stamp read back, kernels by GPU time (most first). */
  async result(): Promise<GpuProfile> {
    await Promise.all(this.reads);
    this.reads.length = 0;
    if (this.failure) throw new KiviError(`--gpu-profile: the timestamps could not be read (${this.failure.message})`);
    const kernels = [...this.byKernel.values()].sort((a, b) => b.ns - a.ns);
    return { kernels, spanNs: kernels.length ? this.last - this.first : 0 };
  }

  dispose(): void {
    for (const b of [...this.free, ...(this.current ? [this.current] : [])]) {
      b.set.destroy();
      b.resolve.destroy();
      b.read.destroy();
    }
    this.free.length = 0;
    this.current = null;
  }

  private batch(): Batch {
    const count = 2 * this.perBatch;
    return {
      set: this.device.createQuerySet({ type: 'timestamp', count }),
      resolve: this.device.createBuffer({ size: count * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
      read: this.device.createBuffer({ size: count * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST }),
      names: [],
    };
  }
}
