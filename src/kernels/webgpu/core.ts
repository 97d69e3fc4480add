/**
 * The WebGPU back end's command recording: ops append compute dispatches to one command encoder and
 * are submitted in batches (a read, a sync, a host write into a buffer in use, or a full batch flushes).
 *
 * Every dispatch gets its parameters (a 256-byte block) and any small host arrays it needs (token ids,
 * positions, row lists) from one "args" buffer, filled on the host while recording and written with one
 * queue.writeBuffer just before the batch is submitted; the queue orders that write after the previous
 * batch and before this one, so one buffer serves every batch. Bind groups are cached per pipeline and
 * buffers (parameters use a dynamic offset), so recording a dispatch allocates nothing on the GPU.
 */
import { KiviError } from '../../util/errors.js';
import { type GpuProfile, GpuProfiler } from './profile.js';
import { grid } from './wgsl.js';

/** A buffer the back end tracks: its id keys bind-group caches; `size` in bytes. */
export interface GBuf {
  readonly buf: GPUBuffer;
  readonly id: number;
  readonly size: number;
}

/** A storage binding: a whole buffer or a window of it. */
export interface Binding {
  b: GBuf;
  offset?: number;
  size?: number;
}

/** A compute kernel: its pipeline, its bind-group layout and the number of storage bindings after params. */
export interface Kernel {
  readonly id: number;
  readonly name: string;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly storage: readonly ('read' | 'rw')[];
  /** Whether binding 1 is the args buffer as data (host arrays). */
  readonly data: boolean;
}

/** Bytes of one dispatch's parameter block (the uniform buffer offset alignment). */
export const PARAM_BYTES = 256;
const PARAM_WORDS = PARAM_BYTES / 4;
/**
 * Dispatches per batch before it is submitted, so the GPU starts while later ones are recorded: a
 * Llama-2-7B decode step is ~450 dispatches, and recording one costs the host microseconds, so with
 * 512 a whole step was recorded before the GPU began it.
 */
const BATCH_DISPATCHES = 64;

/** Host arrays a dispatch uploads with its parameters (4-byte elements). */
export type HostData = Int32Array | Uint32Array | Float32Array;

export class GpuCore {
  readonly queue: GPUQueue;
  private nextId = 1;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private dispatches = 0;
  /** Dispatches recorded since the device was opened (tests count a step's). */
  dispatched = 0;
  /** Pipelines compiled since the device was opened, and the host seconds their compiles blocked. */
  compiled = 0;
  compileSeconds = 0;
  /** Bytes of GPU buffers alive now and the most alive at once (weights, cache arenas, activations, staging). */
  liveBytes = 0;
  peakLiveBytes = 0;
  /** Commands recorded and not submitted. */
  private pending = false;
  // The args buffer and its host image for the batch being recorded.
  private args: GBuf;
  private host = new Uint32Array(1 << 16);
  private hostF = new Float32Array(this.host.buffer);
  private used = 0; // words
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly groupsOf = new Map<number, string[]>();
  private readonly destroyAfterSubmit: GPUBuffer[] = [];
  private readonly staging: GPUBuffer[] = [];
  private nextKernelId = 1;
  private firstError: string | null = null;
  private outOfMemory = false;
  /** While a profile runs (profile.ts): each dispatch in a pass of its own, stamped. */
  private profiler: GpuProfiler | null = null;
  /** KIVI_WEBGPU_PASS=1 (Node; a diagnostic): each dispatch in a pass of its own, as under a profile, unstamped. */
  private readonly passPerDispatch = typeof process !== 'undefined' && process.env?.KIVI_WEBGPU_PASS === '1';

  constructor(readonly device: GPUDevice) {
    this.queue = device.queue;
    this.args = this.buffer(1 << 18, GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
    device.addEventListener('uncapturederror', (e) => {
      const err = (e as GPUUncapturedErrorEvent).error;
      if (this.firstError === null) {
        this.firstError = err.message;
        this.outOfMemory = err.constructor.name === 'GPUOutOfMemoryError' || /out of (device )?memory|OUT_OF_DEVICE_MEMORY/i.test(err.message);
      }
    });
    void device.lost.then((info) => {
      this.firstError ??= `the GPU device was lost (${info.reason}): ${info.message}`;
    });
  }

  /** Throw the first error the device reported (validation, out of memory, loss). */
  check(): void {
    const e = this.firstFailure();
    if (e) throw e;
  }

  /** The message check() throws, or null while the device has reported nothing. */
  get failure(): string | null {
    return this.firstFailure()?.message ?? null;
  }

  private firstFailure(): Error | null {
    if (this.firstError === null) return null;
    const m = this.firstError.split('\n')[0];
    // The server's resources ran out, not the request's fault: 503 there (the CLI prints one line either way).
    if (this.outOfMemory) {
      return new KiviError(
        `webgpu: out of GPU memory (${m}): the weights and KV caches need more than this GPU holds; a 2-bit cache (kivi2) takes 5.3× less than fp16`,
        503,
      );
    }
    return new Error(`webgpu: ${m}`);
  }

  buffer(size: number, usage: number, label?: string): GBuf {
    const bytes = Math.max(16, Math.ceil(size / 16) * 16);
    let buf: GPUBuffer;
    try {
      buf = this.device.createBuffer({ size: bytes, usage, label });
    } catch (e) {
      throw new KiviError(`webgpu: cannot allocate a buffer of ${bytes} bytes: ${(e as Error).message}`);
    }
    this.count(bytes);
    return { buf, id: this.nextId++, size: bytes };
  }

  /** Destroy a buffer once the commands recorded so far no longer need it; forget its bind groups. */
  destroy(b: GBuf): void {
    const keys = this.groupsOf.get(b.id);
    if (keys) {
      for (const k of keys) this.groups.delete(k);
      this.groupsOf.delete(b.id);
    }
    if (this.pending) this.destroyAfterSubmit.push(b.buf);
    else b.buf.destroy();
    this.count(-b.size);
  }

  private count(bytes: number): void {
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
  }

  kernel(name: string, code: string, storage: ('read' | 'rw')[], data = false): Kernel {
    const d = this.device;
    const t0 = performance.now();
    const module = d.createShaderModule({ code, label: name });
    const entries: GPUBindGroupLayoutEntry[] = [
      { binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform', hasDynamicOffset: true, minBindingSize: PARAM_BYTES } },
    ];
    let i = 1;
    if (data) entries.push({ binding: i++, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'read-only-storage' } });
    for (const s of storage) {
      entries.push({ binding: i++, visibility: GPUShaderStage.COMPUTE, buffer: { type: s === 'read' ? 'read-only-storage' : 'storage' } });
    }
    const layout = d.createBindGroupLayout({ entries, label: name });
    const pipeline = d.createComputePipeline({
      layout: d.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main' },
      label: name,
    });
    this.compiled++;
    this.compileSeconds += (performance.now() - t0) / 1000;
    if (typeof process !== 'undefined' && process.env?.KIVI_WEBGPU_DEBUG) {
      void module.getCompilationInfo().then((info) => {
        for (const m of info.messages) if (m.type === 'error') this.firstError ??= `${name}: ${m.lineNum}:${m.linePos} ${m.message}`;
      });
    }
    return { id: this.nextKernelId++, name, pipeline, layout, storage, data };
  }

  // ---- args ---------------------------------------------------------------------------------------

  /** Room for `words` more words of args in this batch (flushing or growing when full). */
  private reserve(words: number): void {
    const cap = this.args.size / 4;
    if (this.used + words <= cap) return;
    if (this.pending) this.flush();
    if (words > this.args.size / 4) {
      this.destroy(this.args);
      this.args = this.buffer(Math.max(words * 4, this.args.size * 2), GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
    }
    if (this.host.length < this.args.size / 4) {
      this.host = new Uint32Array(this.args.size / 4);
      this.hostF = new Float32Array(this.host.buffer);
    }
  }

  // ---- recording ----------------------------------------------------------------------------------

  /** The encoder, outside any compute pass (for copies and clears). */
  commands(): GPUCommandEncoder {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    this.encoder ??= this.device.createCommandEncoder();
    this.pending = true;
    return this.encoder;
  }

  /**
   * Record one dispatch of `count` workgroups (a 2D grid beyond 65535; kernels read the index with
   * wg_index). `params` fills the parameter block (ints through u, floats through f, from word `at`);
   * host arrays in `data` are copied into this batch's args, and their first words (kernels read them
   * through the data binding) are passed as `dataAt`. `xy` gives the grid explicitly (2D kernels).
   */
  dispatch(
    k: Kernel,
    bindings: Binding[],
    count: number,
    params: (u: Uint32Array, f: Float32Array, at: number, dataAt: number[]) => void,
    data: HostData[] = [],
    xy?: [number, number],
  ): void {
    if (count <= 0) return;
    if (this.dispatches >= BATCH_DISPATCHES) this.flush();
    let words = PARAM_WORDS;
    for (const a of data) words += Math.ceil(a.length / PARAM_WORDS) * PARAM_WORDS;
    this.reserve(words);
    const dataAt: number[] = [];
    for (const a of data) {
      dataAt.push(this.used);
      this.host.set(new Uint32Array(a.buffer, a.byteOffset, a.length), this.used);
      this.used += Math.ceil(a.length / PARAM_WORDS) * PARAM_WORDS;
    }
    const at = this.used;
    this.host.fill(0, at, at + PARAM_WORDS);
    params(this.host, this.hostF, at, dataAt);
    this.used += PARAM_WORDS;
    const group = this.bindGroup(k, bindings);
    if ((this.profiler || this.passPerDispatch) && this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (!this.pass) {
      this.encoder ??= this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass(this.profiler ? { timestampWrites: this.profiler.passStamps(k.name) } : undefined);
    }
    this.pending = true;
    const [x, y] = xy ?? grid(count);
    this.pass.setPipeline(k.pipeline);
    this.pass.setBindGroup(0, group, [at * 4]);
    this.pass.dispatchWorkgroups(x, y);
    this.dispatches++;
    this.dispatched++;
  }

  private bindGroup(k: Kernel, bindings: Binding[]): GPUBindGroup {
    if (bindings.length !== k.storage.length) throw new Error(`${k.name}: ${bindings.length} bindings for ${k.storage.length}`);
    let key = `${k.id}:${this.args.id}`;
    for (const b of bindings) key += `:${b.b.id}.${b.offset ?? 0}.${b.size ?? -1}`;
    let g = this.groups.get(key);
    if (!g) {
      const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.args.buf, offset: 0, size: PARAM_BYTES } }];
      let i = 1;
      if (k.data) entries.push({ binding: i++, resource: { buffer: this.args.buf } });
      for (const b of bindings) entries.push({ binding: i++, resource: { buffer: b.b.buf, offset: b.offset ?? 0, size: b.size } });
      g = this.device.createBindGroup({ layout: k.layout, entries, label: k.name });
      this.groups.set(key, g);
      for (const id of [this.args.id, ...bindings.map((b) => b.b.id)]) {
        const list = this.groupsOf.get(id);
        if (list) list.push(key);
        else this.groupsOf.set(id, [key]);
      }
    }
    return g;
  }

  /** Submit what was recorded (with this batch's args). */
  flush(): void {
    if (!this.pending) return;
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.used > 0) this.queue.writeBuffer(this.args.buf, 0, this.host.buffer, 0, this.used * 4);
    const enc = this.encoder!;
    this.encoder = null;
    this.profiler?.resolve(enc);
    this.queue.submit([enc.finish()]);
    this.profiler?.submitted();
    this.pending = false;
    this.used = 0;
    this.dispatches = 0;
    for (const b of this.destroyAfterSubmit) b.destroy();
    this.destroyAfterSubmit.length = 0;
  }

  /** Start timing every dispatch (profile.ts); throws when the device has no timestamp queries. */
  startProfile(): void {
    if (this.profiler) throw new Error('webgpu: a profile is already running');
    this.flush();
    this.profiler = new GpuProfiler(this.device, BATCH_DISPATCHES);
  }

  /** The GPU time per kernel of the dispatches since startProfile(), once they have run. */
  async stopProfile(): Promise<GpuProfile> {
    const p = this.profiler;
    if (!p) throw new Error('webgpu: no profile is running');
    this.flush();
    this.profiler = null;
    try {
      return await p.result();
    } finally {
      p.dispose();
    }
  }

  /** True when commands are recorded and not yet submitted. */
  get busy(): boolean {
    return this.pending;
  }

  /** Write host bytes into a buffer, after everything recorded so far (flushing first if needed). */
  write(b: GBuf, byteOffset: number, data: ArrayBufferView): void {
    if (this.pending) this.flush();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    // Large buffers in pieces (one big write has crashed Dawn; docs GPU.md).
    const PIECE = 32 << 20;
    for (let o = 0; o < bytes.byteLength; o += PIECE) {
      const n = Math.min(PIECE, bytes.byteLength - o);
      this.queue.writeBuffer(b.buf, byteOffset + o, bytes.buffer, bytes.byteOffset + o, n);
    }
  }

  /** Bytes [offset, offset + size) of a buffer, once every command recorded before has run. */
  async readBytes(b: GBuf, offset: number, size: number): Promise<ArrayBuffer> {
    const st = this.takeStaging(size);
    this.commands().copyBufferToBuffer(b.buf, offset, st, 0, size);
    this.flush();
    try {
      await st.mapAsync(GPUMapMode.READ, 0, size);
    } catch (e) {
      this.check();
      throw e;
    }
    const out = st.getMappedRange(0, size).slice(0);
    st.unmap();
    this.staging.push(st);
    this.check();
    return out;
  }

  private takeStaging(size: number): GPUBuffer {
    const need = Math.ceil(size / 256) * 256;
    const i = this.staging.findIndex((s) => s.size >= need);
    if (i >= 0) return this.staging.splice(i, 1)[0]!;
    // Keep a few; drop the smallest when there are many.
    if (this.staging.length > 4) {
      const old = this.staging.shift()!;
      this.count(-old.size);
      old.destroy();
    }
    const bytes = Math.max(need, 4096);
    this.count(bytes);
    return this.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  async sync(): Promise<void> {
    this.flush();
    await this.queue.onSubmittedWorkDone();
    this.check();
  }

  dispose(): void {
    for (const s of this.staging) {
      this.count(-s.size);
      s.destroy();
    }
    this.staging.length = 0;
    this.groups.clear();
  }
}
