/* Fuzzing pynn_model_load (and predict on what loads) with any bytes as the
 * model file. With clang and libFuzzer:
 *   make -C csrc fuzz          -> $(BUILD)/fuzz_model_load CORPUS_DIR
 * Built with -DPYNN_FUZZ_MAIN (any compiler, e.g. under gcc's sanitizers),
 * it runs each file named on its command line once instead. */
#define _GNU_SOURCE  /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pynn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[512];
    const int fd = memfd_create("model", 0);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        pynn_model *model = pynn_model_load(path, err, sizeof err);
        if (model) {
            int64_t shape[8];
            int64_t in = 2, out = 2;
            int rank = pynn_model_input_shape(model, shape, 8);
            for (int axis = 0; axis < rank; axis++)
                in *= shape[axis];
            rank = pynn_model_output_shape(model, shape, 8);
            for (int axis = 0; axis < rank; axis++)
                out *= shape[axis];
            /* only inputs and outputs of a sane size are run */
            if (in >= 0 && out >= 0 && in < (1 << 20) && out < (1 << 20)) {
                float *x = calloc((size_t)in + 1, sizeof *x), *y = calloc((size_t)out + 1, sizeof *y);
                if (x && y)
                    pynn_model_predict(model, x, 2, y, err, sizeof err);
                free(x);
                free(y);
            }
            pynn_model_free(model);
        } else if (!memchr(err, 0, sizeof err)) {
            abort();  /* the message must be NUL-terminated */
        }
    }
    close(fd);
    return 0;
}

#ifdef PYNN_FUZZ_MAIN
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *file = fopen(argv[i], "rb");
        if (!file)
            continue;
        fseek(file, 0, SEEK_END);
        const long size = ftell(file);
        fseek(file, 0, SEEK_SET);
        uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
        if (data && fread(data, 1, (size_t)size, file) == (size_t)size)
            LLVMFuzzerTestOneInput(data, (size_t)size);
        free(data);
        fclose(file);
    }
    return 0;
}
#endif
