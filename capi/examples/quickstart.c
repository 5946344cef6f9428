/* svmem from C: managed memory that migrates between system memory and an
 * emulated device, a kernel given as a C callback, events and counters.
 *
 * Build (after `cargo build -p svmem-capi`):
 *   cc -std=c11 -Wall -Wextra -Werror -Icapi/include capi/examples/quickstart.c \
 *      -Ltarget/debug -lsvmem_capi -Wl,-rpath,$PWD/target/debug -o quickstart
 * Run as root, or with access to /dev/userfaultfd.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svmem.h"

#define CHECK(call)                                                            \
    do {                                                                       \
        SvmemStatus st_ = (call);                                              \
        if (st_ != SVMEM_STATUS_OK) {                                          \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__,  \
                    #call, svmem_status_name(st_), svmem_last_error());        \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/* The kernel: word[i] = word[i] * 3 + 1, on the device, through the lane. */
struct kernel_args {
    uint64_t base;
};

static int32_t triple_plus_one(svmem_lane_t *lane, uint64_t item, void *user) {
    const struct kernel_args *args = user;
    uint64_t addr = args->base + item * sizeof(uint64_t);
    uint64_t v;
    SvmemStatus st = svmem_lane_load_u64(lane, addr, &v);
    if (st != SVMEM_STATUS_OK)
        return st;
    return svmem_lane_store_u64(lane, addr, v * 3 + 1);
}

int main(void) {
    SvmemConfig cfg = svmem_config_default(64u << 20); /* one 64 MiB device */
    svmem_t *svm = NULL;
    CHECK(svmem_create(&cfg, &svm));
    EXPECT(svmem_device_count(svm) == 1);
    CHECK(svmem_events_subscribe(svm, 1 << 16));

    /* 4 MiB of managed memory, written by the CPU. */
    void *mem = NULL;
    size_t len = 0;
    CHECK(svmem_alloc(svm, 4u << 20, &mem, &len));
    EXPECT(len == 4u << 20);
    uint64_t *words = mem;
    size_t n = len / sizeof(uint64_t);
    for (size_t i = 0; i < n; i++)
        words[i] = i;

    /* cudaMemPrefetchAsync(mem, len, 0): move it to device 0 now. */
    SvmemMigrateReport rep;
    CHECK(svmem_prefetch(svm, mem, len, 0, &rep));
    EXPECT(rep.requested == len / 4096 && rep.migrated == len / 4096);

    /* The device reads what the CPU wrote. */
    uint64_t probe = 0;
    CHECK(svmem_device_read(svm, 0, &words[12345], &probe, sizeof probe));
    EXPECT(probe == 12345);

    /* A kernel over every word; the CPU then reads through real page faults. */
    struct kernel_args args = {.base = (uint64_t)(uintptr_t)mem};
    SvmemLaunchReport lr;
    CHECK(svmem_launch(svm, 0, n, triple_plus_one, &args, &lr));
    EXPECT(lr.items_done == n && lr.fatal == 0);
    for (size_t i = 0; i < n; i++)
        EXPECT(words[i] == i * 3 + 1);

    /* cudaMemAdvise(SetPreferredLocation, device 0) and a raw attribute. */
    CHECK(svmem_advise(svm, mem, len, SVMEM_ADVICE_SET_PREFERRED_LOCATION, 0));
    SvmemAttr attrs[] = {{SVMEM_ATTR_SET_FLAGS, SVMEM_FLAG_READ_MOSTLY},
                         {SVMEM_ATTR_GRANULARITY, 4}};
    CHECK(svmem_set_attributes(svm, mem, len, attrs, 2));

    /* The device writes; the CPU sees it. */
    uint64_t seven = 7;
    CHECK(svmem_device_write(svm, 0, &words[1], &seven, sizeof seven));
    EXPECT(words[1] == 7);

    /* Errors: a code, and a message naming the value and the fix. */
    SvmemStatus st = svmem_migrate(svm, (char *)mem + 1, 4096, 0, NULL);
    EXPECT(st == SVMEM_STATUS_INVALID_ARGUMENT);
    EXPECT(strlen(svmem_last_error()) > 0);
    printf("an unaligned migrate says: %s\n", svmem_last_error());
    EXPECT(svmem_migrate(svm, mem, len, 42, NULL) == SVMEM_STATUS_INVALID_ARGUMENT);
    EXPECT(svmem_free(svm, (char *)mem + 4096) == SVMEM_STATUS_NOT_MANAGED);

    /* Events: the prefetch's migration to device 0 is among them. */
    SvmemEvent ev;
    int32_t got;
    int to_device = 0, from_device = 0;
    while ((got = svmem_events_poll(svm, &ev)) == 1) {
        if (ev.kind == SVMEM_EVENT_KIND_MIGRATE_END && ev.to == 0)
            to_device += ev.migrated > 0;
        if (ev.kind == SVMEM_EVENT_KIND_MIGRATE_END && ev.to == SVMEM_SYSTEM)
            from_device += ev.migrated > 0;
    }
    EXPECT(got == 0);
    EXPECT(to_device >= 1 && from_device >= 1);

    /* Counters and memory usage. */
    SvmemStats stats;
    CHECK(svmem_stats(svm, &stats));
    EXPECT(stats.to_device_pages >= len / 4096);
    EXPECT(stats.cpu_faults >= 1 && stats.kernel_launches == 1);
    SvmemMemoryUsage usage;
    CHECK(svmem_memory_usage(svm, &usage));
    EXPECT(usage.managed_bytes == len);
    size_t need = 0;
    EXPECT(svmem_stats_json(svm, NULL, 0, &need) == SVMEM_STATUS_INVALID_ARGUMENT);
    char *json = malloc(need + 1);
    CHECK(svmem_stats_json(svm, json, need + 1, &need));
    EXPECT(strstr(json, "\"cpu_faults\"") != NULL);
    free(json);

    printf("quickstart: %zu words checked; %llu pages to the device, %llu CPU faults\n",
           n, (unsigned long long)stats.to_device_pages,
           (unsigned long long)stats.cpu_faults);
    CHECK(svmem_free(svm, mem));
    svmem_destroy(svm);
    printf("quickstart: ok\n");
    return 0;
}
