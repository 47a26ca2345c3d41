/* MPI ping-pong between ranks 0 and 1: one-way latency at small sizes,
 * bandwidth at large sizes. Used to compare bare metal with a container
 * using its own MPI and with the host's MPI injected (bench/pingpong.sh).
 *
 *   pingpong [ITERATIONS [WARMUP]]
 *
 * Prints one line per size: bytes, one-way latency in microseconds (half
 * the median round trip over ITERATIONS after WARMUP), and bandwidth in
 * MB/s (10^6 bytes per second, from the same median). The median, not the
 * mean, so a single scheduler hiccup on a shared machine does not move it.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    static const size_t sizes[] = {8, 64, 512, 1024, 8192, 1 << 20, 2 << 20, 4 << 20};
    const int nsizes = sizeof sizes / sizeof sizes[0];
    int rank, nranks, len;
    char host[MPI_MAX_PROCESSOR_NAME], peer[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (nranks != 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong: needs exactly 2 ranks, got %d\n", nranks);
        MPI_Finalize();
        return 2;
    }
    int iters = argc > 1 ? atoi(argv[1]) : 1000;
    int warmup = argc > 2 ? atoi(argv[2]) : 100;
    if (iters < 1 || warmup < 0) {
        if (rank == 0)
            fprintf(stderr, "pingpong: usage: pingpong [ITERATIONS>=1 [WARMUP>=0]]\n");
        MPI_Finalize();
        return 2;
    }
    MPI_Get_processor_name(host, &len);
    MPI_Sendrecv(host, sizeof host, MPI_CHAR, 1 - rank, 0, peer, sizeof peer, MPI_CHAR, 1 - rank, 0,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);

    char *buf = malloc(sizes[nsizes - 1]);
    double *rtt = malloc(sizeof(double) * (size_t)iters);
    if (!buf || !rtt) {
        fprintf(stderr, "pingpong: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(buf, rank, sizes[nsizes - 1]);
    if (rank == 0)
        printf("# ranks on %s and %s, %d iterations after %d warm-up\n# %10s %12s %12s\n", host, peer,
               iters, warmup, "bytes", "lat_us", "bw_MBps");
    for (int s = 0; s < nsizes; s++) {
        int n = (int)sizes[s];
        /* Fewer round trips for the big messages: they take milliseconds each. */
        int count = n >= (1 << 20) ? (iters + 9) / 10 : iters;
        int warm = n >= (1 << 20) ? (warmup + 9) / 10 : warmup;
        MPI_Barrier(MPI_COMM_WORLD);
        for (int i = -warm; i < count; i++) {
            double t0 = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, n, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
                MPI_Recv(buf, n, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, n, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, n, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
            }
            if (i >= 0)
                rtt[i] = MPI_Wtime() - t0;
        }
        if (rank == 0) {
            qsort(rtt, (size_t)count, sizeof(double), cmp_double);
            double one_way = rtt[count / 2] / 2;
            printf("  %10d %12.2f %12.1f\n", n, one_way * 1e6, n / one_way / 1e6);
        }
    }
    free(rtt);
    free(buf);
    MPI_Finalize();
    return 0;
}
