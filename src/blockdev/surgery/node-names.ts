/**
 * The one generator of node names for nodes nobody named: implicit
 * children (a format's file, a backing node opened from an image header),
 * the filters jobs insert, the node blockdev-create opens to check an image.
 * As QEMU's id_generate() (util/id.c), one counter for the whole process
 * and two random digits, so nobody can rely on a name.
 */
let counter = 0;
let seq = 0;

/** The next generated name; one `taken` says is in use is skipped. */
export function generateNodeName(taken: (name: string) => boolean = () => false): string {
  let name: string;
  do name = `#block${counter++}${String(Math.floor(Math.random() * 100)).padStart(2, '0')}`;
  while (taken(name));
  return name;
}

/** A number for "a node got its name now": QEMU lists named nodes newest first (graph_bdrv_states, prepended). */
export function nextNameSeq(): number {
  return seq++;
}
