{
  "targets": [
    {
      "target_name": "blockd_native",
      "sources": ["src/blockd_native.c", "src/sector_cipher.c", "src/zstd_compress.c", "src/fuse_device.c"],
      "libraries": ["-ldl"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"]
    }
  ]
}
