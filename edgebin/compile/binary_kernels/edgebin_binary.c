/* The binary kernels with external linkage, for libraries that TVM-compiled kernels link against (the host's
 * model.so, the Raspberry Pi's): see edgebin_binary.h. */
#define EDGEBIN_BINARY_API
#include "edgebin_binary.h"
