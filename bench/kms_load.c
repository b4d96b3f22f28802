/* A C load generator for bench/kms_throughput.py: THREADS threads, each a loop of requests on
 * a NEW TCP connection (connect, send, shutdown(SHUT_WR), read to EOF), so that the clients
 * cost about what vlmcs costs vlmcsd and the servers, not the clients, set the pace.
 *
 * It speaks nothing but bytes it is given (ADBA's protocol, prepared by the bench):
 *   v1 FILE   one 144-byte request; each request gets 16 random bytes at 8 (the CMID) and at
 *             64 (the nonce), exactly what Request.encode() gives for them;
 *   pool FILE records of 16-byte nonce + a request of RECSIZE bytes (v2: sealed in Python
 *             before the run); each record is sent once; a thread stops when none is left.
 * Replies are checked: 244 bytes, "ADBR", and with CHECK status 0 and our nonce.
 *
 *   kms_load PORT THREADS SECONDS v1|pool FILE RECSIZE CHECK
 *
 * Prints "ready", waits for a line on stdin, runs, prints one JSON line (the keys of the
 * Python load process: elapsed, cpu, ok, fail, lat in microseconds, answers, live).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REPLY 244
#define MAXLAT 200000

static int port, nthreads, check, recsize;
static double seconds;
static int pool_mode;
static unsigned char *data;
static size_t nrecords;
static atomic_size_t next_record;

struct out {
    long ok, f_connect, f_short, f_bad, f_status, empty;
    double elapsed;
    uint32_t *lat;
    long nlat;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg) {
    struct out *o = arg;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned char req[512], buf[512], nonce[16];
    size_t len = pool_mode ? (size_t)recsize : 144;
    if (!pool_mode)
        memcpy(req, data, 144);
    double t0 = now(), end = t0 + seconds, t;
    while ((t = now()) < end) {
        if (pool_mode) {
            size_t i = atomic_fetch_add(&next_record, 1);
            if (i >= nrecords) {
                o->empty++;
                break;
            }
            memcpy(nonce, data + i * (16 + len), 16);
            memcpy(req, data + i * (16 + len) + 16, len);
        } else {
            if (getrandom(req + 8, 16, 0) != 16 || getrandom(req + 64, 16, 0) != 16)
                abort();
            memcpy(nonce, req + 64, 16);
        }
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
            o->f_connect++;
            if (s >= 0)
                close(s);
            continue;
        }
        size_t sent = 0;
        while (sent < len) {
            ssize_t n = send(s, req + sent, len - sent, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            sent += (size_t)n;
        }
        shutdown(s, SHUT_WR);
        size_t got = 0;
        for (;;) {
            ssize_t n = recv(s, buf + got, sizeof buf - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
            if (got >= sizeof buf)
                break;
        }
        close(s);
        double t1 = now();
        if (got < REPLY) {
            o->f_short++;
            continue;
        }
        if (got != REPLY || memcmp(buf, "ADBR", 4) != 0) {
            o->f_bad++;
            continue;
        }
        if (check && (buf[5] != 0 || memcmp(buf + 6, nonce, 16) != 0)) {
            o->f_status++;
            continue;
        }
        o->ok++;
        if (o->nlat < MAXLAT)
            o->lat[o->nlat++] = (uint32_t)((t1 - t) * 1e6);
    }
    o->elapsed = now() - t0;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: kms_load PORT THREADS SECONDS v1|pool FILE RECSIZE CHECK\n");
        return 2;
    }
    port = atoi(argv[1]);
    nthreads = atoi(argv[2]);
    seconds = atof(argv[3]);
    pool_mode = strcmp(argv[4], "pool") == 0;
    recsize = atoi(argv[6]);
    check = atoi(argv[7]);
    if (nthreads < 1 || nthreads > 256 || recsize < 1 || recsize > 496)
        return 2;
    FILE *fh = fopen(argv[5], "rb");
    if (!fh)
        return 1;
    fseek(fh, 0, SEEK_END);
    long size = ftell(fh);
    fseek(fh, 0, SEEK_SET);
    data = malloc(size > 0 ? (size_t)size : 1);
    if (!data || fread(data, 1, (size_t)size, fh) != (size_t)size)
        return 1;
    fclose(fh);
    if (pool_mode)
        nrecords = (size_t)size / (16 + (size_t)recsize);
    else if (size != 144)
        return 1;
    struct out *outs = calloc((size_t)nthreads, sizeof *outs);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    for (int i = 0; i < nthreads; i++)
        outs[i].lat = malloc(sizeof(uint32_t) * MAXLAT);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    double t0 = now();
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, &outs[i]);
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    double elapsed = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    long ok = 0, fc = 0, fs = 0, fb = 0, fst = 0, empty = 0;
    for (int i = 0; i < nthreads; i++) {
        ok += outs[i].ok;
        fc += outs[i].f_connect;
        fs += outs[i].f_short;
        fb += outs[i].f_bad;
        fst += outs[i].f_status;
        empty += outs[i].empty;
    }
    printf("{\"elapsed\": %.6f, \"cpu\": %.6f, \"ok\": %ld, \"fail\": {", elapsed, cpu, ok);
    int first = 1;
    const char *names[] = {"connect", "short-reply", "bad-reply", "wrong-status-or-nonce"};
    long values[] = {fc, fs, fb, fst};
    for (int k = 0; k < 4; k++)
        if (values[k]) {
            printf("%s\"%s\": %ld", first ? "" : ", ", names[k], values[k]);
            first = 0;
        }
    printf("}, \"pool_empty\": %ld, \"answers\": [], \"live\": 0, \"lat\": [", empty);
    first = 1;
    for (int i = 0; i < nthreads; i++)
        for (long j = 0; j < outs[i].nlat; j++) {
            printf(first ? "%u" : ",%u", outs[i].lat[j]);
            first = 0;
        }
    printf("]}\n");
    return 0;
}
