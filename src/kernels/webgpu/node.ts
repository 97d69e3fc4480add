/**
 * Node's side of the WebGPU back end: the GPU object of Dawn's Node bindings (the optional npm package
 * `webgpu`, pinned in package.json). Tests ask for SwiftShader (the Vulkan driver on the CPU that
 * Debian's chromium package ships) with `KIVI_WEBGPU_ADAPTER=swiftshader` or the `swiftshader` option:
 * the Vulkan loader is then pointed at SwiftShader's ICD, and Chromium's copy of libvulkan is loaded
 * first, so nobody has to export VK_ICD_FILENAMES and LD_LIBRARY_PATH before starting Node.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import { KiviError } from '../../util/errors.js';

/** The `webgpu` version this code was tested with (package.json pins it). */
export const WEBGPU_PACKAGE = 'webgpu@0.6.2';

/** Where Debian's chromium package keeps SwiftShader and its Vulkan loader. */
export const SWIFTSHADER_DIR = process.env.KIVI_SWIFTSHADER_DIR ?? '/usr/lib/chromium';

/** glibc's RTLD_NODELETE (Node's os.constants.dlopen does not list it). */
const RTLD_NODELETE = 0x1000;

let gpu: Promise<GPU> | undefined;
let swiftshader = false;

/** Why SwiftShader cannot be used here, or null when its files are present. */
export function swiftshaderMissing(): string | null {
  for (const f of ['vk_swiftshader_icd.json', 'libvk_swiftshader.so', 'libvulkan.so.1']) {
    if (!fs.existsSync(`${SWIFTSHADER_DIR}/${f}`)) return `no SwiftShader at ${SWIFTSHADER_DIR}/${f} (apt-get install chromium)`;
  }
  return null;
}

/** Whether the `webgpu` package can be loaded (without loading it). */
export function webgpuPackageMissing(): string | null {
  try {
    createRequire(import.meta.url).resolve('webgpu');
    return null;
  } catch {
    return `the optional package "webgpu" is not installed (npm install ${WEBGPU_PACKAGE})`;
  }
}

/**
 * Whether this Linux machine has a device node through which a GPU driver is reached: DRM render nodes
 * (Mesa's drivers: AMD, Intel, …), NVIDIA's, WSL's, Mali's. Without one there is no hardware adapter to
 * find, and asking Dawn anyway wakes the software Vulkan drivers Mesa installs (lavapipe), which print
 * on stderr; so `auto` asks only where one exists. Other platforms: true (Dawn decides).
 */
export function gpuDeviceNodePresent(dev = '/dev'): boolean {
  if (process.platform !== 'linux') return true;
  const has = (p: string) => fs.existsSync(`${dev}/${p}`);
  if (has('nvidiactl') || has('nvidia0') || has('dxg') || has('mali0')) return true;
  try {
    return fs.readdirSync(`${dev}/dri`).some((f) => f.startsWith('renderD') || f.startsWith('card'));
  } catch {
    return false;
  }
}

/**
 * Whether a Vulkan loader can be opened at all (Linux): Dawn prints a warning on stderr when it cannot,
 * so `auto` checks first and quietly falls back.
 */
export function vulkanLoaderPresent(): boolean {
  if (process.platform !== 'linux') return true;
  try {
    process.dlopen({ exports: {} } as NodeJS.Module, 'libvulkan.so.1', 2 /* RTLD_NOW */ | RTLD_NODELETE);
  } catch (e) {
    // "did not self-register": it loaded (it is just not a Node addon); "cannot open": it is absent.
    return !/cannot open shared object/.test((e as Error).message);
  }
  return true;
}

function useSwiftshader(): void {
  const why = swiftshaderMissing();
  if (why) throw new KiviError(`webgpu: ${why}`);
  process.env.VK_ICD_FILENAMES = `${SWIFTSHADER_DIR}/vk_swiftshader_icd.json`;
  try {
    // Loading the library by path makes Dawn's later dlopen("libvulkan.so.1") find it (same soname).
    process.dlopen({ exports: {} } as NodeJS.Module, `${SWIFTSHADER_DIR}/libvulkan.so.1`, 2 | 256 /* RTLD_GLOBAL */ | RTLD_NODELETE);
  } catch (e) {
    if (!/self-register/.test((e as Error).message)) throw new KiviError(`webgpu: cannot load ${SWIFTSHADER_DIR}/libvulkan.so.1: ${(e as Error).message}`);
  }
}

/**
 * The GPU of Dawn's bindings (one per process: the first call decides between SwiftShader and the
 * system's drivers, and any extra Dawn features, such as scripts/gpu/spirv-dump.mjs's dump_shaders).
 */
export function nodeGpu(opts: { swiftshader?: boolean; dawnFeatures?: readonly string[] } = {}): Promise<GPU> {
  const want = opts.swiftshader ?? process.env.KIVI_WEBGPU_ADAPTER === 'swiftshader';
  if (gpu) {
    if (want && !swiftshader) throw new KiviError('webgpu: SwiftShader was asked for after the system GPU was opened in this process');
    return gpu;
  }
  const missing = webgpuPackageMissing();
  if (missing) throw new KiviError(`--backend webgpu: ${missing}`);
  if (want) {
    useSwiftshader();
    swiftshader = true;
  }
  gpu = (async () => {
    const mod = (await import('webgpu' as string)) as { create(flags: string[]): GPU; globals: Record<string, unknown> };
    // The WebGPU constants (GPUBufferUsage, GPUMapMode, ...) as browsers define them.
    for (const [k, v] of Object.entries(mod.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
    // Workgroup memory is not zeroed at every workgroup's start: the kernels write what they read
    // (the zeroing costs SwiftShader ~10 ms per workgroup, and real GPUs a pass over it too).
    // KIVI_WEBGPU_ROBUST=0 (a diagnostic for timing, never the default): without Tint's index clamps.
    const features = ['disable_workgroup_init', ...(process.env.KIVI_WEBGPU_ROBUST === '0' ? ['disable_robustness'] : []), ...(opts.dawnFeatures ?? [])];
    // Timestamps at the GPU's own resolution (Dawn rounds them to ~65 µs by default, against timing
    // attacks from web pages; a profile of microsecond kernels needs them whole).
    return mod.create([`enable-dawn-features=${features.join(',')}`, 'disable-dawn-features=timestamp_quantization']);
  })();
  gpu.catch(() => (gpu = undefined));
  return gpu;
}

/** Whether this process opened SwiftShader. */
export function usingSwiftshader(): boolean {
  return swiftshader;
}
