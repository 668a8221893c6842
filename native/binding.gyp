{
  "variables": {
    "has_rbd%": "<!(test -f /usr/include/rbd/librbd.h && test -f /usr/include/rados/librados.h && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "blockd_native",
      "sources": ["src/blockd_native.c", "src/sector_cipher.c", "src/zstd_compress.c", "src/fuse_device.c", "src/write_batch.c", "src/loop_poll.c"],
      "libraries": ["-ldl"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "conditions": [
        ["has_rbd==1", {
          "sources": ["src/rbd.c"],
          "libraries": ["-lrbd", "-lrados"],
          "defines": ["BLOCKD_HAVE_RBD=1"]
        }]
      ]
    }
  ]
}
