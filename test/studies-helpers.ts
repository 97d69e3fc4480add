/** Helpers for the studies' tests: running the CLI, and checking chart files really are images. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Resvg } from '@resvg/resvg-js';
import { kivi, WIKITEXT } from './helpers.js';

export { WIKITEXT };

/** Run the CLI, expect success, return stdout. */
export function kiviOk(args: string[]): string {
  const r = kivi(args, 600_000);
  assert.equal(r.status, 0, `kivi ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout;
}

/** An SVG file that a strict renderer parses into a picture of positive size, with marks in it. */
export function assertSvg(file: string): void {
  const svg = fs.readFileSync(file, 'utf8');
  assert.ok(svg.length > 1000, `${file}: only ${svg.length} bytes`);
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/, `${file}: not an SVG document`);
  assert.ok(svg.trimEnd().endsWith('</svg>'), `${file}: truncated`);
  assert.ok((svg.match(/<path /g) ?? []).length > 10, `${file}: no marks`);
  const img = new Resvg(svg).render();
  assert.ok(img.width > 100 && img.height > 100, `${file}: renders as ${img.width}×${img.height}`);
}

/** A PNG file: signature, an IHDR of positive size, an IEND, and more than a blank page's bytes. */
export function assertPng(file: string): void {
  const b = fs.readFileSync(file);
  assert.ok(b.length > 5000, `${file}: only ${b.length} bytes`);
  assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${file}: no PNG signature`);
  assert.equal(b.toString('latin1', 12, 16), 'IHDR');
  assert.ok(b.readUInt32BE(16) > 100 && b.readUInt32BE(20) > 100, `${file}: ${b.readUInt32BE(16)}×${b.readUInt32BE(20)}`);
  assert.equal(b.toString('latin1', b.length - 8, b.length - 4), 'IEND', `${file}: truncated`);
}

/** Every chart a command wrote: each SVG valid, each with its PNG. */
export function assertCharts(files: string[], expected: number): void {
  const svgs = files.filter((f) => f.endsWith('.svg'));
  assert.equal(svgs.length, expected, `charts: ${files.join(', ')}`);
  for (const f of svgs) {
    assertSvg(f);
    assertPng(f.replace(/\.svg$/, '.png'));
  }
}
