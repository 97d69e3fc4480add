/**
 * Finding a WebGPU adapter and device: `navigator.gpu` in browsers and workers, Dawn's Node bindings in
 * Node (node.ts, loaded only there). A software adapter (SwiftShader, a "fallback" adapter) runs the same
 * kernels ~100× slower than a GPU: `auto` never picks it; `webgpu` takes whatever adapter there is.
 */
import { KiviError } from '../../util/errors.js';

export interface WebGpuOptions {
  /** Node: use SwiftShader (tests); also `KIVI_WEBGPU_ADAPTER=swiftshader`. */
  swiftshader?: boolean;
  /**
   * Largest storage binding to use, in bytes (default: the device's). Tests lower it to exercise the
   * paths that split weights and cache arenas over several bindings.
   */
  maxBindingBytes?: number;
  /** Most arena buffers per layer for cache pages (default: what the device's storage-buffer limit allows, ≤ 16). */
  maxArenas?: number;
  /**
   * Matmul as one thread per output (bit-identical to the GPU kernels, no barriers), for CPU
   * implementations such as SwiftShader. Default: on software adapters only.
   */
  serialMatmul?: boolean;
  /** GEMV shapes by rows (dense.ts parseGemvTable; default GEMV_TABLE); also `KIVI_WEBGPU_GEMV`. */
  gemvTable?: string;
}

export interface GpuDevice {
  device: GPUDevice;
  adapter: GPUAdapter;
  /** A software or fallback adapter (SwiftShader, llvmpipe, WARP). */
  fallback: boolean;
  /** "NVIDIA: 580.159.04 (nvidia hopper)" */
  name: string;
  /** WGSL's packed 8-bit dot products (dot4I8Packed, dot4U8Packed): the bulk kernel's integer key path. */
  dot4: boolean;
  /**
   * The fewest invocations a subgroup of this device has, where it offers WGSL's subgroups (the feature is
   * then enabled on the device), else 0: the bulk kernel's `sg` build sums a lane's partial scores with
   * subgroup shuffles when a lane fits in one.
   */
  subgroupMin: number;
}

const inNode = () => typeof process !== 'undefined' && !!process.versions?.node && typeof (globalThis as { document?: unknown }).document === 'undefined';

async function gpuObject(o: WebGpuOptions): Promise<GPU | null> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (inNode()) {
    const { nodeGpu } = await import('./node.js');
    return nodeGpu(o);
  }
  return null;
}

/** An adapter's info (older implementations lack adapter.info). */
function infoOf(a: GPUAdapter): GPUAdapterInfo | Record<string, string | boolean | undefined> {
  return (a as { info?: GPUAdapterInfo }).info ?? {};
}

export function isFallback(a: GPUAdapter): boolean {
  const info = infoOf(a) as { isFallbackAdapter?: boolean; vendor?: string; architecture?: string; description?: string; device?: string };
  if (info.isFallbackAdapter || (a as { isFallbackAdapter?: boolean }).isFallbackAdapter) return true;
  const words = `${info.vendor ?? ''} ${info.architecture ?? ''} ${info.description ?? ''} ${info.device ?? ''}`;
  return /swiftshader|llvmpipe|lavapipe|softpipe|microsoft basic render|warp/i.test(words);
}

export function adapterName(a: GPUAdapter): string {
  const info = infoOf(a) as { vendor?: string; architecture?: string; description?: string };
  const parts = [info.description, [info.vendor, info.architecture].filter(Boolean).join(' ')].filter((s) => s?.trim());
  return parts.length ? parts.join(', ') : 'unknown adapter';
}

/**
 * The adapter WebGPU offers here, or null. `hardwareOnly` (what `auto` asks): null unless it is a real
 * GPU. Never throws for a missing package or adapter when `quiet` (the `auto` probe).
 */
export async function findAdapter(o: WebGpuOptions, hardwareOnly: boolean): Promise<GPUAdapter | null> {
  const gpu = await gpuObject(o);
  if (!gpu) return null;
  const a = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!a || (hardwareOnly && isFallback(a))) return null;
  return a;
}

/** The WGSL language features of this WebGPU (empty where it does not list them). */
export async function wgslFeatures(o: WebGpuOptions): Promise<ReadonlySet<string>> {
  const gpu = await gpuObject(o);
  return new Set((gpu as { wgslLanguageFeatures?: ReadonlySet<string> } | null)?.wgslLanguageFeatures ?? []);
}

/** The device on an adapter, with the limits the kernels need raised to what the adapter allows. */
export async function openDevice(adapter: GPUAdapter, wgsl: ReadonlySet<string> = new Set()): Promise<GpuDevice> {
  const L = adapter.limits;
  const requiredLimits: Record<string, number> = {};
  for (const k of [
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxComputeWorkgroupStorageSize',
    'maxStorageBuffersPerShaderStage',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupsPerDimension',
  ] as const) {
    requiredLimits[k] = L[k];
  }
  if (L.maxStorageBuffersPerShaderStage < 8) throw new KiviError('webgpu: the adapter allows fewer than 8 storage buffers per shader stage');
  if (L.maxComputeInvocationsPerWorkgroup < 256) throw new KiviError('webgpu: the adapter allows fewer than 256 invocations per workgroup');
  const sgMin = (infoOf(adapter) as { subgroupMinSize?: number }).subgroupMinSize;
  const subgroupMin = adapter.features.has('subgroups') && typeof sgMin === 'number' && sgMin > 0 ? sgMin : 0;
  let device: GPUDevice;
  try {
    // Timestamp queries where offered: only a profile (profile.ts) writes them.
    const requiredFeatures: GPUFeatureName[] = adapter.features.has('timestamp-query') ? ['timestamp-query'] : [];
    if (subgroupMin > 0) requiredFeatures.push('subgroups' as GPUFeatureName);
    device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  } catch (e) {
    throw new KiviError(`webgpu: cannot open a device on ${adapterName(adapter)}: ${(e as Error).message}`);
  }
  return { device, adapter, fallback: isFallback(adapter), name: adapterName(adapter), dot4: wgsl.has('packed_4x8_integer_dot_product'), subgroupMin };
}
