# The documented alternative build: `npx node-gyp rebuild` compiles the same CPU sources as
# CMakeLists.txt (no CUDA backend). `npm install` uses cmake-js; CI builds both.
{
  "targets": [
    {
      "target_name": "repadapter",
      "sources": [
        "native/cpu/memory.cc",
        "native/cpu/gemm.cc",
        "native/cpu/embed.cc",
        "native/cpu/layernorm.cc",
        "native/cpu/layernorm_adapter.cc",
        "native/cpu/gelu.cc",
        "native/cpu/attention.cc",
        "native/cpu/adapter.cc",
        "native/cpu/residual.cc",
        "native/cpu/loss.cc",
        "native/cpu/optimizer.cc",
        "native/model/config.cc",
        "native/model/layers.cc",
        "native/model/vit.cc",
        "native/model/op_checks.cc",
        "native/core/backend_registry.cc",
        "native/data/batch.cc",
        "native/napi/addon.cc",
        "native/napi/compute_queue.cc",
        "native/napi/tensor.cc",
        "native/napi/data.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fexceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "ldflags": ["-fopenmp", "-Wl,-z,nodelete"],
      "libraries": ["-ldnnl", "-ldl"]
    }
  ]
}
