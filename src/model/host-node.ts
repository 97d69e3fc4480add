/** Node only (the browser bundle replaces it): the machine's memory, for the footprint check. */
import * as os from 'node:os';

export function hostMemoryBytes(): number {
  return os.totalmem();
}
