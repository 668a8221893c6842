/**
 * What the codecs throw on malformed input: bad magic, a length the message
 * layout cannot have, a length over a limit. It is a BlockError (EIO) so that
 * a client driver's I/O fails with the block layer's own vocabulary; a server
 * catches it where it answers with an NBD error of its own.
 */
import { BlockError } from '../util/errors.ts';

export class NbdProtocolError extends BlockError {
  constructor(message: string) {
    super('EIO', message);
    this.name = 'NbdProtocolError';
  }
}
