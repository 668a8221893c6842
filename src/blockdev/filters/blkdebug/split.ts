/**
 * How QEMU's block layer cuts a write-zeroes or discard request for a node
 * with a preferred alignment and a maximum size (bdrv_co_do_pwrite_zeroes,
 * bdrv_co_pdiscard): an unaligned head up to the first boundary, aligned
 * pieces of at most `max` (rounded down to the alignment; 0: no maximum),
 * and the unaligned tail. Pure: [offset, length] pairs. (For discard, QEMU
 * also trims pieces to the request alignment; BlockNode has already dropped
 * the edges that are not aligned to it.)
 */
export function cutRequest(offset: number, length: number, align: number, max: number): [number, number][] {
  const limit = max ? Math.max(align, max - (max % align)) : Number.MAX_SAFE_INTEGER;
  const out: [number, number][] = [];
  let head = offset % align;
  const tail = (offset + length) % align;
  for (let pos = offset, left = length; left > 0;) {
    let n = left;
    if (head) {
      n = Math.min(left, align - head);
      head = (head + n) % align;
    } else if (tail && n > align) {
      n -= tail;
    }
    n = Math.min(n, limit);
    out.push([pos, n]);
    pos += n;
    left -= n;
  }
  return out;
}
