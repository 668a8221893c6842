/**
 * GLib's g_base64_decode, which qsd uses once the characters are checked:
 * 4-character groups make 3 bytes ('=' counts as 0 and drops the byte it
 * pads); a partial group at the end is dropped.
 */
export function glibBase64Decode(s: string): Buffer {
  const out: number[] = [];
  let v = 0;
  let i = 0;
  let last0 = '';
  let last1 = '';
  for (const c of s) {
    const rank = c === '=' ? 0 : B64.indexOf(c);
    last1 = last0;
    last0 = c;
    v = ((v << 6) | rank) & 0xffffff;
    if (++i === 4) {
      out.push(v >> 16);
      if (last1 !== '=') out.push((v >> 8) & 0xff);
      if (last0 !== '=') out.push(v & 0xff);
      i = 0;
    }
  }
  return Buffer.from(out);
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
