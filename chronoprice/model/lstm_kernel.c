/* The recursive forecast of the two-layer LSTM, for the `native` engine (model/native.py).

   ONNX Runtime's LSTM computes each row's gates in small calls after each step's product; here
   every step multiplies a tile of rows by the weights with the tile's gate sums held in
   registers, and updates the tile's cells while those sums are still in the first-level cache.
   The schedule is the onnx graph's (model/onnx_graph.py): for log returns the ten windows share
   one timeline, right-aligned here so the rows a step works on are always the first ones.

   Written with GCC's vector extensions, so one source gives AVX-512, AVX2 or NEON code: it is
   compiled with -march=native on the machine that runs it (model/native.py). Plain C otherwise:
   it is loaded through ctypes, which also releases the GIL while it runs. */

#include <stdlib.h>
#include <string.h>

/* A tile's gate sums stay in registers: TILE_ROWS x TILE_VECTORS vectors of LANES floats, and
   the weights' vectors beside them. AVX-512 has 32 registers of 16 floats, AVX2 16 of 8; the
   sizes are the fastest measured on this project's machines (docs/PERFORMANCE.md). */
#if defined(__AVX512F__)
#define LANES 16
#define TILE_ROWS 6
#define TILE_VECTORS 4
#else
#define LANES 8
#define TILE_ROWS 6
#define TILE_VECTORS 2
#endif
#define MAX_UNITS 64

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int vi __attribute__((vector_size(LANES * sizeof(int))));
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int channels, units1, units2, dense_units;
    /* Keras layout: kernels [inputs, 4 units] with gate blocks i, f, c, o; dense [inputs, outputs]. */
    const float *kernel1, *recurrent1, *bias1;
    const float *kernel2, *recurrent2, *bias2;
    const float *dense1, *dense_bias1, *dense2;
    float dense_bias2;
} network;

typedef struct {
    float *h1, *c1, *h2, *c2; /* [rows, units] each */
    float *inputs;            /* [rows, channels]: this step's input of each row */
} state;

INLINE vf load(const float *from) {
    vf value;
    memcpy(&value, from, sizeof value);
    return value;
}

INLINE void store(float *to, vf value) { memcpy(to, &value, sizeof value); }

INLINE vf splat(float value) { return (vf){0} + value; }

INLINE vf clamp(vf x, float low, float high) {
    vi below = x < low, above = x > high;
    vi bits = ((vi)x & ~below & ~above) | ((vi)splat(low) & below) | ((vi)splat(high) & above);
    return (vf)bits;
}

/* tanh as Eigen computes it for TensorFlow's float tanh: x p(x^2) / q(x^2), odd rational of
   degree 13 / 6, clamped where it reaches 1; a few parts in 10^7 and no exp, so about half the
   work of 1 - 2 / (exp(2x) + 1) and relatively exact near 0, where that one loses digits. */
INLINE vf tanh_vf(vf x) {
    x = clamp(x, -7.90531110763549805f, 7.90531110763549805f);
    vf square = x * x;
    vf p = splat(-2.76076847742355e-16f);
    p = p * square + 2.00018790482477e-13f;
    p = p * square - 8.60467152213735e-11f;
    p = p * square + 5.12229709037114e-08f;
    p = p * square + 1.48572235717979e-05f;
    p = p * square + 6.37261928875436e-04f;
    p = p * square + 4.89352455891786e-03f;
    vf q = splat(1.19825839466702e-06f);
    q = q * square + 1.18534705686654e-04f;
    q = q * square + 2.26843463243900e-03f;
    q = q * square + 4.89352518554385e-03f;
    return x * p / q;
}

INLINE vf sigmoid_vf(vf x) { return 0.5f + 0.5f * tanh_vf(0.5f * x); }

/* sums[r][:] = bias + a[r] @ weights_a + b[r] @ weights_b for `rows` (at most TILE_ROWS) rows,
   a pass of TILE_VECTORS vectors of columns at a time. */
INLINE void gate_sums(int rows, int gates, const float *bias,
                      const float *const a[], int a_count, const float *weights_a,
                      const float *const b[], int b_count, const float *weights_b,
                      float *sums) {
    for (int column = 0; column < gates; column += TILE_VECTORS * LANES) {
        vf sum[TILE_ROWS][TILE_VECTORS];
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < TILE_VECTORS; v++) sum[r][v] = load(bias + column + v * LANES);
        for (int k = 0; k < a_count; k++) {
            vf w[TILE_VECTORS];
            for (int v = 0; v < TILE_VECTORS; v++) w[v] = load(weights_a + k * gates + column + v * LANES);
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < TILE_VECTORS; v++) sum[r][v] += a[r][k] * w[v];
        }
        for (int k = 0; k < b_count; k++) {
            vf w[TILE_VECTORS];
            for (int v = 0; v < TILE_VECTORS; v++) w[v] = load(weights_b + k * gates + column + v * LANES);
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < TILE_VECTORS; v++) sum[r][v] += b[r][k] * w[v];
        }
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < TILE_VECTORS; v++) store(sums + r * gates + column + v * LANES, sum[r][v]);
    }
}

/* The cell update of one row from its gate sums (i, f, c, o blocks of `units`). */
INLINE void update_cell(int units, const float *sums, float *h, float *c) {
    for (int j = 0; j < units; j += LANES) {
        vf input = sigmoid_vf(load(sums + j)), forget = sigmoid_vf(load(sums + units + j));
        vf candidate = tanh_vf(load(sums + 2 * units + j)), output = sigmoid_vf(load(sums + 3 * units + j));
        vf cell = forget * load(c + j) + input * candidate;
        store(c + j, cell);
        store(h + j, output * tanh_vf(cell));
    }
}

/* One time step of both layers for `rows` rows starting at `first`. */
INLINE void tile_step(const network *net, state *s, int first, int rows) {
    const int u1 = net->units1, u2 = net->units2;
    float sums[TILE_ROWS * 4 * MAX_UNITS] __attribute__((aligned(64)));
    const float *a[TILE_ROWS], *b[TILE_ROWS];
    for (int r = 0; r < rows; r++) {
        a[r] = s->inputs + (first + r) * net->channels;
        b[r] = s->h1 + (first + r) * u1;
    }
    gate_sums(rows, 4 * u1, net->bias1, a, net->channels, net->kernel1, b, u1, net->recurrent1, sums);
    for (int r = 0; r < rows; r++) update_cell(u1, sums + r * 4 * u1, s->h1 + (first + r) * u1, s->c1 + (first + r) * u1);
    for (int r = 0; r < rows; r++) {
        a[r] = s->h1 + (first + r) * u1;
        b[r] = s->h2 + (first + r) * u2;
    }
    gate_sums(rows, 4 * u2, net->bias2, a, u1, net->kernel2, b, u2, net->recurrent2, sums);
    for (int r = 0; r < rows; r++) update_cell(u2, sums + r * 4 * u2, s->h2 + (first + r) * u2, s->c2 + (first + r) * u2);
}

/* Constant row counts let the compiler keep a tile's sums in registers. */
static void step(const network *net, state *s, int first, int count) {
    int row = first, end = first + count;
    for (; row + TILE_ROWS <= end; row += TILE_ROWS) tile_step(net, s, row, TILE_ROWS);
    for (; row + 2 <= end; row += 2) tile_step(net, s, row, 2);
    if (row < end) tile_step(net, s, row, 1);
}

static void reset(const network *net, state *s, int first, int count) {
    memset(s->h1 + first * net->units1, 0, sizeof(float) * count * net->units1);
    memset(s->c1 + first * net->units1, 0, sizeof(float) * count * net->units1);
    memset(s->h2 + first * net->units2, 0, sizeof(float) * count * net->units2);
    memset(s->c2 + first * net->units2, 0, sizeof(float) * count * net->units2);
}

/* Dense(relu) -> Dense(1) on one row's last hidden state. */
static float next_return(const network *net, const float *h2) {
    float out = net->dense_bias2;
    for (int d = 0; d < net->dense_units; d++) {
        float hidden = net->dense_bias1[d];
        for (int j = 0; j < net->units2; j++) hidden += h2[j] * net->dense1[j * net->dense_units + d];
        out += (hidden > 0 ? hidden : 0) * net->dense2[d];
    }
    return out;
}

/* windows [horizon, window, origins, channels] (features.recursive_windows); row k * origins + b
   is origin b's window k. Window k starts at the k-th step of the real candles' timeline, from
   a zero state; after the last real candle, window k - 1 is complete and predicts the candle
   that windows k.. read next. */
static void shared_timeline(const network *net, state *s, const float *windows, int horizon,
                            int window, int origins, float *path) {
    const int channels = net->channels;
    for (int t = 0; t < window + horizon - 1; t++) {
        int open = t < horizon ? t + 1 : horizon; /* horizon <= window: native.py checks */
        int closed = t < window ? 0 : t - window + 1;
        if (t < horizon) reset(net, s, t * origins, origins);
        for (int k = closed; k < open; k++)
            for (int b = 0; b < origins; b++) {
                float *input = s->inputs + (k * origins + b) * channels;
                memcpy(input, windows + (((size_t)k * window + t - k) * origins + b) * channels, sizeof(float) * channels);
                if (t >= window) input[0] += path[b * horizon + t - window];
            }
        step(net, s, closed * origins, (open - closed) * origins);
        if (t >= window - 1)
            for (int b = 0; b < origins; b++)
                path[b * horizon + t - window + 1] = next_return(net, s->h2 + ((t - window + 1) * origins + b) * net->units2);
    }
}

/* Relative closes: each window is re-referenced to its newest, predicted close, so it runs whole
   after the one before: closes predicted so far enter as cumulative returns. */
static void window_by_window(const network *net, state *s, const float *windows, int horizon,
                             int window, int origins, float *path) {
    const int channels = net->channels;
    for (int k = 0; k < horizon; k++) {
        reset(net, s, 0, origins);
        for (int t = 0; t < window; t++) {
            for (int b = 0; b < origins; b++) {
                float *input = s->inputs + b * channels, *returns = path + b * horizon, newest = 0, known = 0;
                for (int j = 0; j < k; j++) newest += returns[j];
                for (int j = 0; j <= t - (window - k); j++) known += returns[j];
                memcpy(input, windows + (((size_t)k * window + t) * origins + b) * channels, sizeof(float) * channels);
                input[0] += known - newest;
            }
            step(net, s, 0, origins);
        }
        for (int b = 0; b < origins; b++) path[b * horizon + k] = next_return(net, s->h2 + b * net->units2);
    }
}

/* path [origins, horizon]: each step's predicted scaled log return, cumulated from the origin.
   Returns 0, or -1 when memory could not be had. */
int forecast_paths(const network *net, const float *windows, int horizon, int window, int origins,
                   int relative_closes, float *path) {
    const size_t rows = (size_t)horizon * origins;
    state s = {
        .h1 = calloc(rows * net->units1, sizeof(float)), .c1 = calloc(rows * net->units1, sizeof(float)),
        .h2 = calloc(rows * net->units2, sizeof(float)), .c2 = calloc(rows * net->units2, sizeof(float)),
        .inputs = calloc(rows * net->channels, sizeof(float)),
    };
    int ok = s.h1 && s.c1 && s.h2 && s.c2 && s.inputs;
    if (ok) {
        if (relative_closes)
            window_by_window(net, &s, windows, horizon, window, origins, path);
        else
            shared_timeline(net, &s, windows, horizon, window, origins, path);
        for (int b = 0; b < origins; b++)
            for (int k = 1; k < horizon; k++) path[b * horizon + k] += path[b * horizon + k - 1];
    }
    free(s.h1), free(s.c1), free(s.h2), free(s.c2), free(s.inputs);
    return ok ? 0 : -1;
}
