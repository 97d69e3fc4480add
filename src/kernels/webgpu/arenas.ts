/**
 * Cache arenas in WGSL: a layer's pages live in up to arenaCount() storage buffers (pool.ts), and a
 * kernel reads or writes the one a page's slot names. These helpers declare the bindings and generate
 * the per-slot access functions the attention and job kernels share.
 */

/** Most arena buffers (bindings) per layer: a slot is 4 bits of a page handle (pool.ts). */
export const MAX_ARENAS = 16;
/** Storage bindings of the attention kernel besides its arenas (plan, qkv, att, partials). */
const FIXED_STORAGE = 4;

/**
 * Arena bindings per layer on a device allowing `maxStorageBuffers` storage buffers per shader stage:
 * as many as the attention kernel can bind (4 × 2 GiB on the WebGPU minimum of 8; 16 × 2 GiB where the
 * device allows 20, so one layer of a 4M-token float16 cache fits), at most `cap`.
 */
export function arenaCount(maxStorageBuffers: number, cap = MAX_ARENAS): number {
  return Math.max(1, Math.min(cap, MAX_ARENAS, maxStorageBuffers - FIXED_STORAGE));
}

/** Declarations of the first `na` arena bindings (the layout always has all the device's; unused ones stay unbound in the shader). */
export function arenaDecls(ty: string, access: 'read' | 'read_write', first: number, na: number): string {
  let s = '';
  for (let i = 0; i < na; i++) s += `@group(0) @binding(${first + i}) var<storage, ${access}> a${i}: array<${ty}>;\n`;
  return s;
}

/** A function selecting arena slot `s` (no branch when one slot is in use, the usual case). */
export function arenaSwitch(na: number, sig: string, body: (a: string) => string): string {
  if (na === 1) return `fn ${sig} {\n  ${body('a0')}\n}`;
  let cases = '';
  for (let i = 1; i < na; i++) cases += `    case ${i}u: { ${body(`a${i}`)} }\n`;
  return `fn ${sig} {\n  switch s {\n${cases}    default: { ${body('a0')} }\n  }\n}`;
}

/**
 * ld4 without branches: every arena is loaded, at index i in slot s and at 0 in the others (one cached
 * word), and the load of slot s selected.
 */
export function arenaSelect(na: number): string {
  let body = '  var r = a0[select(0u, i, s == 0u)];\n';
  for (let k = 1; k < na; k++) body += `  r = select(r, a${k}[select(0u, i, s == ${k}u)], s == ${k}u);\n`;
  return `fn ld4(s: u32, i: u32) -> vec4<u32> {\n${body}  return r;\n}`;
}

/**
 * Loads from arena k alone (ld4_k, ldw_k, ldh_k): what the hot loops use when a tile's pages all lie in
 * one arena. Measured on an H200: a per-load switch over 3–4 arenas made the 2-bit kernel about twice
 * as slow (loads behind branches are not issued together), while one switch around the loop costs nothing.
 */
export function arenaDirect(na: number): string {
  let s = '';
  for (let k = 0; k < na; k++) {
    s += `fn ld4_${k}(i: u32) -> vec4<u32> { return a${k}[i]; }\n`;
    s += `fn ldw_${k}(i: u32) -> u32 { return pick(ld4_${k}(i >> 2u), i & 3u); }\n`;
    s += `fn ldh_${k}(hi: u32) -> f32 { return f16_to_f32(half_of(ldw_${k}(hi >> 1u), hi)); }\n`;
  }
  return s;
}

/**
 * Word loads where the arenas are bound as words (array<u32>): ldw(s, i) and, for the hot loops, ldw_k(i)
 * of arena k alone. One load a word, where a vector binding loads 16 bytes and picks the word (LDW).
 */
export function arenaWords(na: number): string {
  let s = arenaSwitch(na, 'ldw(s: u32, i: u32) -> u32', (a) => `return ${a}[i];`);
  if (na > 1) for (let k = 0; k < na; k++) s += `\nfn ldw_${k}(i: u32) -> u32 { return a${k}[i]; }`;
  return s;
}

/**
 * A block of kernel code whose arena loads (ld4/ldw/ldh of a slot variable) go to arena `us` directly,
 * one copy per arena, or through the per-load switch (the default case) when the tile mixes arenas.
 */
export function unswitched(na: number, block: string): string {
  if (na === 1) return block;
  let cases = '';
  for (let k = 0; k < na; k++) cases += `case ${k}u: {\n${block.replace(/\b(ld4|ldw|ldh)\(sl\w*, /g, `$1_${k}(`)}}\n`;
  return `switch us {\n${cases}default: {\n${block}}\n}\n`;
}

/**
 * WGSL: a word of a vec4 by selects (indexing a vector value at run time makes some compilers copy it to
 * memory), and a word of an arena through ld4 (which the kernel defines: arenaSwitch or arenaSelect).
 */
export const LDW = /* wgsl */ `
fn pick(v: vec4<u32>, k: u32) -> u32 { return select(select(v.x, v.y, k == 1u), select(v.z, v.w, k == 3u), k >= 2u); }
fn ldw(s: u32, i: u32) -> u32 { return pick(ld4(s, i >> 2u), i & 3u); }
`;
