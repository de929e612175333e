# The native attention kernel and SGEMM (native/). Each compute variant is its own static
# library so that it gets its own instruction-set flags; addon.cc, compiled for
# the baseline CPU, picks one at run time. Built by scripts/build-native.mjs.
{
  'target_defaults': {
    'cflags': ['-fPIC', '-O3', '-fno-math-errno'],
    'cflags_cc': ['-std=gnu++17'],
    'xcode_settings': {
      'CLANG_CXX_LANGUAGE_STANDARD': 'gnu++17',
      'GCC_OPTIMIZATION_LEVEL': '3',
      'MACOSX_DEPLOYMENT_TARGET': '11.0',
    },
  },
  'targets': [
    {
      'target_name': 'ringattn_attn_portable',
      'type': 'static_library',
      'sources': ['native/attn_portable.cc', 'native/gemm_portable.cc', 'native/engine_portable.cc'],
    },
    {
      'target_name': 'ringattn_native',
      'sources': ['native/addon.cc', 'native/gemm.cc', 'native/gemm_napi.cc', 'native/engine.cc', 'native/shm.cc'],
      'dependencies': [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except",
        'ringattn_attn_portable',
      ],
      'conditions': [
        ['target_arch=="x64" or target_arch=="ia32"', {
          'defines': ['RINGATTN_X86'],
          'dependencies': ['ringattn_attn_avx2', 'ringattn_attn_avx512'],
        }],
      ],
    },
  ],
  'conditions': [
    ['target_arch=="x64" or target_arch=="ia32"', {
      'targets': [
        {
          'target_name': 'ringattn_attn_avx2',
          'type': 'static_library',
          'sources': ['native/attn_avx2.cc', 'native/gemm_avx2.cc', 'native/engine_avx2.cc'],
          'cflags': ['-mavx2', '-mfma'],
          'xcode_settings': {'OTHER_CFLAGS': ['-mavx2', '-mfma']},
        },
        {
          'target_name': 'ringattn_attn_avx512',
          'type': 'static_library',
          'sources': ['native/attn_avx512.cc', 'native/gemm_avx512.cc', 'native/engine_avx512.cc'],
          'cflags': ['-mavx512f', '-mfma'],
          'xcode_settings': {'OTHER_CFLAGS': ['-mavx512f', '-mfma']},
        },
      ],
    }],
  ],
}
