/*
 * edgebin's Raspberry Pi runner: runs a TVM-compiled model (model.so, a Relax VM executable) on N samples.
 *
 *   ./runner model.so inputs.bin outputs.bin N
 *
 * inputs.bin holds N samples back to back, each one input tensor in row-major order; outputs.bin receives the N
 * output tensors the same way. The input's dtype and shape are read from input.txt beside model.so, one line such
 * as "float32 1 1 28 28". On success the runner prints "key value" lines on stdout (samples, output_elems,
 * output_dtype, seconds_per_inference) and exits 0; on failure it prints one line on stderr and exits non-zero.
 *
 * Only the tvm-ffi C++ API is used (no Python, no tvm/runtime headers, which do not compile from the wheel):
 * Module::LoadFromFile loads model.so through libtvm_runtime.so, "vm_load_executable" makes the Relax VM, and
 * "main" runs one inference. Samples run one at a time, in order.
 *
 * Timing: sample 0 first runs once untimed (the VM allocates its memory pool on the first call); then every
 * sample's call to main() is bracketed by edgebin_runner_begin() / edgebin_runner_end(). On a board the runner
 * reads CLOCK_MONOTONIC around each call: seconds_per_inference is the mean. Under QEMU that figure means
 * nothing; edgebin's instruction-count plugin counts what runs between the two markers instead (their addresses
 * come from `nm`, which is why the runner is linked without PIE). With EDGEBIN_MAPS=PATH set, the runner copies
 * /proc/self/maps to PATH at the end, so counts can be attributed to model.so, libtvm_runtime.so and libc.
 *
 * Exit codes: 2 usage, 3 input.txt, 4 inputs.bin, 5 loading the model, 6 running it, 7 writing outputs.bin.
 */
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

extern "C" {
volatile int edgebin_runner_phase; /* distinct stores keep the two markers from being merged */
__attribute__((noipa)) void edgebin_runner_begin(void) { edgebin_runner_phase = 1; }
__attribute__((noipa)) void edgebin_runner_end(void) { edgebin_runner_phase = 2; }
}

namespace {

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes > 0 ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void fail(int code, const std::string& message) {
  std::fprintf(stderr, "runner: %s\n", message.c_str());
  std::exit(code);
}

struct InputSpec {
  DLDataType dtype;
  std::string dtype_name;
  std::vector<int64_t> shape;
};

DLDataType parse_dtype(const std::string& name) {
  struct Known { const char* name; DLDataType type; };
  static const Known known[] = {
      {"float32", {kDLFloat, 32, 1}}, {"float64", {kDLFloat, 64, 1}}, {"float16", {kDLFloat, 16, 1}},
      {"int8", {kDLInt, 8, 1}},       {"int16", {kDLInt, 16, 1}},     {"int32", {kDLInt, 32, 1}},
      {"int64", {kDLInt, 64, 1}},     {"uint8", {kDLUInt, 8, 1}},     {"bool", {kDLBool, 8, 1}},
  };
  for (const Known& k : known) {
    if (name == k.name) return k.type;
  }
  fail(3, "input.txt: unknown dtype '" + name + "'");
}

std::string dtype_name(DLDataType t) {
  const char* kind = t.code == kDLFloat ? "float" : t.code == kDLInt ? "int" : t.code == kDLUInt ? "uint" : "other";
  return std::string(kind) + std::to_string(t.bits);
}

InputSpec read_spec(const std::string& model_path) {
  size_t slash = model_path.find_last_of('/');
  std::string path = (slash == std::string::npos ? std::string() : model_path.substr(0, slash + 1)) + "input.txt";
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) fail(3, "cannot open " + path + " (the input's dtype and shape, e.g. \"float32 1 1 28 28\")");
  char name[32] = {0};
  if (std::fscanf(f, "%31s", name) != 1) fail(3, path + ": no dtype");
  InputSpec spec{parse_dtype(name), name, {}};
  long long dim;
  while (std::fscanf(f, "%lld", &dim) == 1) {
    if (dim <= 0) fail(3, path + ": dimensions must be positive");
    spec.shape.push_back(dim);
  }
  std::fclose(f);
  if (spec.shape.empty()) fail(3, path + ": no shape after the dtype");
  return spec;
}

std::vector<char> read_file(const char* path, size_t expected) {
  FILE* f = std::fopen(path, "rb");
  if (!f) fail(4, std::string("cannot open ") + path);
  std::vector<char> data(expected + 1);
  size_t got = std::fread(data.data(), 1, data.size(), f);
  std::fclose(f);
  if (got != expected) {
    fail(4, std::string(path) + " holds " + std::to_string(got) + (got > expected ? "+" : "") + " bytes, expected " +
                std::to_string(expected) + " (N samples of the input in input.txt)");
  }
  data.resize(expected);
  return data;
}

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void copy_maps(const char* path) {
  FILE* in = std::fopen("/proc/self/maps", "r");
  FILE* out = std::fopen(path, "w");
  if (in && out) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, in)) > 0) std::fwrite(buf, 1, n, out);
  }
  if (in) std::fclose(in);
  if (out) std::fclose(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) fail(2, "usage: runner MODEL.so INPUTS.bin OUTPUTS.bin N");
  char* end = nullptr;
  long n = std::strtol(argv[4], &end, 10);
  if (*end != '\0' || n < 1) fail(2, std::string("N must be a positive integer, got '") + argv[4] + "'");

  // dlopen searches the library path for a bare file name; "model.so" means the one in this folder.
  std::string model = std::strchr(argv[1], '/') ? std::string(argv[1]) : "./" + std::string(argv[1]);
  InputSpec spec = read_spec(model);
  size_t elems = 1;
  for (int64_t d : spec.shape) elems *= static_cast<size_t>(d);
  size_t sample_bytes = elems * ((spec.dtype.bits + 7) / 8);
  std::vector<char> inputs = read_file(argv[2], sample_bytes * static_cast<size_t>(n));

  ffi::Optional<ffi::Function> main_fn;
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(model);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
    main_fn = vm->GetFunction("main");
  } catch (const std::exception& err) {
    fail(5, "cannot load " + model + ": " + err.what());
  }
  if (!main_fn.has_value()) fail(5, model + " has no function 'main'");

  ffi::Tensor input = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::Shape(spec.shape), spec.dtype, DLDevice{kDLCPU, 0});
  FILE* out = std::fopen(argv[3], "wb");
  if (!out) fail(7, std::string("cannot write ") + argv[3]);
  size_t out_elems = 0;
  std::string out_dtype;
  double seconds = 0.0;
  try {
    std::memcpy(input.data_ptr(), inputs.data(), sample_bytes);
    (*main_fn)(input);  // warm-up: the first call sizes the memory pool
    for (long i = 0; i < n; ++i) {
      std::memcpy(input.data_ptr(), inputs.data() + i * sample_bytes, sample_bytes);
      double start = now_s();
      edgebin_runner_begin();
      ffi::Any result = (*main_fn)(input);
      edgebin_runner_end();
      seconds += now_s() - start;
      auto tensor = result.as<ffi::Tensor>();
      if (!tensor.has_value()) fail(6, "main returned something other than one tensor");
      out_elems = static_cast<size_t>(tensor->numel());
      out_dtype = dtype_name(tensor->dtype());
      size_t bytes = out_elems * ((tensor->dtype().bits + 7) / 8);
      if (std::fwrite(tensor->data_ptr(), 1, bytes, out) != bytes) fail(7, std::string("short write to ") + argv[3]);
    }
  } catch (const std::exception& err) {
    fail(6, std::string("inference failed: ") + err.what());
  }
  if (std::fclose(out) != 0) fail(7, std::string("cannot close ") + argv[3]);
  if (const char* maps = std::getenv("EDGEBIN_MAPS")) copy_maps(maps);
  std::printf("samples %ld\noutput_elems %zu\noutput_dtype %s\nseconds_per_inference %.9f\n", n, out_elems,
              out_dtype.c_str(), seconds / n);
  return 0;
}
