{
  "targets": [
    {
      "target_name": "ublkd_native",
      "sources": [
        "addon/addon.cc",
        "addon/ring.cc",
        "addon/sys.cc",
        "addon/inline_io.cc",
        "addon/copier.cc",
        "addon/abi_layout.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=9", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++20", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    }
  ]
}
