/**
 * How host back ends (TypeScript, WebAssembly) see a page: typed-array views of the memory that holds
 * it and the page's byte offset there. The TypeScript pool gives each page its own buffer (offset 0);
 * the WebAssembly pool hands out addresses in one linear memory (views of the whole memory, offset =
 * the address). The reference attention and job code (kernels/ts) reads pages only through this.
 */
export interface PageViews {
  f32: Float32Array<ArrayBufferLike>;
  u16: Uint16Array<ArrayBufferLike>;
  u32: Uint32Array<ArrayBufferLike>;
  /** Bytes (the TypeScript pool's pages: 8-bit metadata, SEG_KIVI_V8). */
  u8?: Uint8Array<ArrayBufferLike>;
  /** Byte offset of the page in the views' buffer. */
  byteOffset: number;
}

export interface HostPages {
  /** Views of page `page` (the object may be reused by the next call). */
  views(page: number): PageViews;
}

/** Bytes a host pool takes for a page: every layer's and kv head's section, in whole 64-byte units (the allocator's). */
export function hostPageBytes(shape: { numLayers: number; numKvHeads: number }, sectionBytes: number): number {
  return Math.ceil((shape.numLayers * shape.numKvHeads * sectionBytes) / 64) * 64;
}
