// CPU kernels of ms_optim.LARS, called through mindspore.ops.Custom(func_type="aot").
//
// Compiled on first use by ms_optim/_cpu_kernels.py (g++ -O3 -ffp-contract=off); the portable
// path built from mindspore.ops is the fallback wherever that fails. The arithmetic is the one
// of ms_optim.ops.trust_ratio and of MindSpore's CPU ApplyMomentum, operation for operation in
// float32 (no fused multiply-add), so given the same trust ratios the momentum step is
// bit-identical to LARS(nn.Momentum) on the portable path; the sums of squares are accumulated
// in float64 (the portable float32 reduction differs from them by rounding only).
//
// Work is cut into chunks of CHUNK elements across all tensors; thread t of T takes a fixed,
// contiguous range of chunks and partial sums are combined in chunk order, so results do not
// depend on thread timing.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int64_t CHUNK = 1 << 15;

struct Chunk {
  int tensor;
  int64_t lo, hi;
};

int64_t Numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

int ThreadCount(int64_t total) {
  const char *env = std::getenv("MS_OPTIM_CPU_THREADS");
  int t = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
  if (t < 1) t = 1;
  int64_t by_size = total / (4 * CHUNK) + 1;  // small steps are not worth a thread
  return static_cast<int>(t < by_size ? t : by_size);
}

std::vector<Chunk> MakeChunks(const std::vector<int64_t> &sizes) {
  std::vector<Chunk> chunks;
  for (int t = 0; t < static_cast<int>(sizes.size()); ++t) {
    for (int64_t lo = 0; lo < sizes[t]; lo += CHUNK) {
      chunks.push_back({t, lo, lo + CHUNK < sizes[t] ? lo + CHUNK : sizes[t]});
    }
  }
  return chunks;
}

template <class F>
void ForChunks(const std::vector<Chunk> &chunks, int64_t total, F body) {
  const int64_t n = static_cast<int64_t>(chunks.size());
  const int threads = ThreadCount(total);
  auto run = [&](int k) {
    const int64_t lo = n * k / threads, hi = n * (k + 1) / threads;
    for (int64_t c = lo; c < hi; ++c) body(c, chunks[c]);
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) pool.emplace_back(run, k);
  run(0);
  for (auto &th : pool) th.join();
}

bool AllFloat32(int first, int last, const char **dtypes) {
  for (int i = first; i < last; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0 && std::strcmp(dtypes[i], "float") != 0) return false;
  }
  return true;
}

}  // namespace

// Inputs x_0 .. x_{n-1} (float32, any shapes); output: float32[n], out[i] = sum(x_i^2).
extern "C" int MsOptimSquareSums(int nparam, void **params, int *ndims, int64_t **shapes,
                                 const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const int n = nparam - 1;
  if (n < 1 || !AllFloat32(0, nparam, dtypes)) return 1;
  std::vector<int64_t> sizes(n);
  int64_t total = 0;
  for (int i = 0; i < n; ++i) total += sizes[i] = Numel(ndims[i], shapes[i]);
  const std::vector<Chunk> chunks = MakeChunks(sizes);
  std::vector<double> partial(chunks.size(), 0.0);
  ForChunks(chunks, total, [&](int64_t c, const Chunk &ch) {
    const float *x = static_cast<const float *>(params[ch.tensor]);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t j = ch.lo;
    for (; j + 4 <= ch.hi; j += 4) {
      s0 += static_cast<double>(x[j]) * x[j];
      s1 += static_cast<double>(x[j + 1]) * x[j + 1];
      s2 += static_cast<double>(x[j + 2]) * x[j + 2];
      s3 += static_cast<double>(x[j + 3]) * x[j + 3];
    }
    for (; j < ch.hi; ++j) s0 += static_cast<double>(x[j]) * x[j];
    partial[c] = (s0 + s1) + (s2 + s3);
  });
  std::vector<double> sums(n, 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) sums[chunks[c].tensor] += partial[c];
  float *out = static_cast<float *>(params[n]);
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(sums[i]);
  return 0;
}

// LARS + momentum in one pass, in place. Inputs: run[1], a[n], b[n], lr[n], mu[1] (float32),
// then per parameter i: weight w_i, accumulation v_i, gradient g_i (float32, one shape).
// Output: float32[1] = run; where run != 0 the weights and accumulations are updated in place:
//   g' = a_i * g + b_i * w;  v = v * mu + g';  w = w - lr_i * v
// and where run == 0 (a step with a non-finite gradient) nothing is touched. The flag replaces
// a graph branch: MindSpore's control-flow graphs do not see Parameter.set_data made after
// compilation (load_param_into_net), a branch-free graph does.
extern "C" int MsOptimLarsMomentum(int nparam, void **params, int *ndims, int64_t **shapes,
                                   const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  constexpr int kFirst = 5;  // run, a, b, lr, mu
  const int n = (nparam - kFirst - 1) / 3;
  if (n < 1 || nparam != 3 * n + kFirst + 1 || !AllFloat32(0, nparam, dtypes)) return 1;
  const float run = *static_cast<const float *>(params[0]);
  const float *a = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  const float *lr = static_cast<const float *>(params[3]);
  const float mu = *static_cast<const float *>(params[4]);
  std::vector<int64_t> sizes(n);
  int64_t total = 0;
  for (int i = 0; i < n; ++i) {
    total += sizes[i] = Numel(ndims[kFirst + 3 * i], shapes[kFirst + 3 * i]);
    if (Numel(ndims[kFirst + 1 + 3 * i], shapes[kFirst + 1 + 3 * i]) != sizes[i] ||
        Numel(ndims[kFirst + 2 + 3 * i], shapes[kFirst + 2 + 3 * i]) != sizes[i]) return 2;
  }
  *static_cast<float *>(params[nparam - 1]) = run;
  if (run == 0.0f) return 0;
  const std::vector<Chunk> chunks = MakeChunks(sizes);
  ForChunks(chunks, total, [&](int64_t, const Chunk &ch) {
    const int i = ch.tensor;
    float *w = static_cast<float *>(params[kFirst + 3 * i]);
    float *v = static_cast<float *>(params[kFirst + 1 + 3 * i]);
    const float *g = static_cast<const float *>(params[kFirst + 2 + 3 * i]);
    const float ai = a[i], bi = b[i], li = lr[i];
    for (int64_t j = ch.lo; j < ch.hi; ++j) {
      const float gp = ai * g[j] + bi * w[j];
      const float vj = v[j] * mu + gp;
      v[j] = vj;
      w[j] = w[j] - li * vj;
    }
  });
  return 0;
}
