/*
 * The backward of an embedding lookup, for ctrkit/pytorch/layers/embedding.py (class _GatherRows):
 * out[ids[i]] += rows[i] for every looked-up row, in the order of the ids (so deterministic).
 *
 * Why C: torch's accumulating index_put_ sorts the ids first (~7 ms for DIN's 171k ids of 16
 * floats on one core); this is one pass over the rows, each row a vector add into the table.
 */
#include <stdint.h>

static void add_row(int64_t dim, const float *restrict row, float *restrict target)
{
    for (int64_t k = 0; k < dim; ++k)
        target[k] += row[k];
}

/* rows [n, dim] float32, ids [n] int64 into out [num_rows, dim] float32; returns 0, or 1 (nothing
   written beyond the first bad row) where an id is outside [0, num_rows) */
int ctrkit_scatter_add_rows_f32(int64_t n, int64_t dim, const int64_t *ids, const float *rows, int64_t num_rows,
                                float *out)
{
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        if (id < 0 || id >= num_rows)
            return 1;
        add_row(dim, rows + i * dim, out + id * dim);
    }
    return 0;
}
