/** blkdebug's blockdev-add options (QEMU's BlockdevOptionsBlkdebug and the rule structs). */
import { arr, enm, obj, opt, req } from '../../../qapi/types.ts';
import { BlockdevRef } from '../../options.ts';
import { BlkdebugEventType, BlkdebugIoTypeEnum } from '../../debug-events.ts';

const InjectError = obj('BlkdebugInjectErrorOptions', [
  req('event', BlkdebugEventType, 'trigger event'),
  opt('state', 'int', 'the state identifier blkdebug needs to be in to actually trigger the event; defaults to "any"'),
  opt('iotype', BlkdebugIoTypeEnum, 'the type of I/O operations on which this error should be injected'),
  opt('errno', 'int', 'error identifier (errno) to be returned; defaults to EIO'),
  opt('sector', 'int', 'specifies the sector index which has to be affected in order to actually trigger the event'),
  opt('once', 'bool', 'disables further events after this one has been triggered; defaults to false'),
  opt('immediately', 'bool', 'fail immediately; defaults to false'),
]);

const SetState = obj('BlkdebugSetStateOptions', [
  req('event', BlkdebugEventType, 'trigger event'),
  opt('state', 'int', 'the current state identifier blkdebug needs to be in; defaults to "any"'),
  req('new_state', 'int', 'the state identifier blkdebug is supposed to assume if this event is triggered'),
]);

export const BlockPermission = enm('BlockPermission', ['consistent-read', 'write', 'write-unchanged', 'resize']);

export const BlockdevOptionsBlkdebug = obj('BlockdevOptionsBlkdebug', [
  req('image', BlockdevRef, 'underlying raw block device (or image file)'),
  opt('config', 'str', 'filename of the configuration file'),
  opt('align', 'int', 'required alignment for requests in bytes, must be positive power of 2, or 0 for default'),
  opt('max-transfer', 'int32', 'maximum size for I/O transfers in bytes'),
  opt('opt-write-zero', 'int32', 'preferred alignment for write zero requests in bytes'),
  opt('max-write-zero', 'int32', 'maximum size for write zero requests in bytes'),
  opt('opt-discard', 'int32', 'preferred alignment for discard requests in bytes'),
  opt('max-discard', 'int32', 'maximum size for discard requests in bytes'),
  opt('inject-error', arr(InjectError), 'array of error injection descriptions'),
  opt('set-state', arr(SetState), 'array of state-change descriptions'),
  opt('take-child-perms', arr(BlockPermission), 'Permissions to take on @image in addition to what is necessary anyway'),
  opt('unshare-child-perms', arr(BlockPermission), 'Permissions not to share on @image in addition to what cannot be shared anyway'),
]);
