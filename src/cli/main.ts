#!/usr/bin/env node
/** The `kivi` command line: a thin face over the library. */
import { Command, CommanderError } from 'commander';
import { KiviError } from '../util/errors.js';
import { register as registerAnalyze } from './commands/analyze.js';
import { register as registerBench } from './commands/bench.js';
import { register as registerEval } from './commands/eval.js';
import { register as registerGenerate } from './commands/generate.js';
import { register as registerServe } from './commands/serve.js';
import { register as registerWeb } from './commands/web.js';

const program = new Command();
program
  .name('kivi')
  .description('LLM inference in TypeScript with a 2-/4-bit KIVI KV cache')
  .version('0.1.0')
  .configureOutput({ outputError: (str, write) => write(`kivi: ${str.trim().replace(/^error: /, '')}\n`) })
  .exitOverride();

registerGenerate(program);
registerEval(program);
registerServe(program);
registerWeb(program);
registerAnalyze(program);
registerBench(program);

function die(message: string): never {
  process.stderr.write(`kivi: ${message.split('\n')[0]}\n`);
  process.exit(1);
}

/** What the operating system said, in words: "no space left on device (ENOSPC)". */
function systemReason(e: NodeJS.ErrnoException): string {
  const words = e.message.replace(/^E[A-Z]+:\s*/, '').replace(/,\s*\w+(\s+'.*')?$/, '');
  return `${words} (${e.code})`;
}

// A reader that went away (`kivi generate … | head`) ends the command quietly, as it ends `cat`; any other
// failure to write the output (a full disk) is one line.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  die(`cannot write to standard output: ${systemReason(e)}`);
});

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    // Commander already printed its message (or help/version); keep its exit code, 1 for any error.
    process.exit(e.exitCode === 0 ? 0 : 1);
  }
  if (e instanceof KiviError) die(e.message);
  if (process.env.KIVI_DEBUG) console.error(e);
  // A file the operating system would not read or write (a directory where a file belongs, no permission,
  // a full disk): not a bug, one line naming the file.
  const sys = e as NodeJS.ErrnoException;
  if (typeof sys?.code === 'string' && /^E[A-Z]+$/.test(sys.code) && typeof sys.syscall === 'string') {
    die(`cannot ${sys.syscall === 'write' ? 'write' : 'use'}${sys.path ? ` ${sys.path}` : ''}: ${systemReason(sys)}`);
  }
  die(`internal error: ${(e as Error)?.message ?? String(e)} (set KIVI_DEBUG=1 for a stack trace)`);
}
