/* The MPI program baked into shoal/debian-mpich:12 (/usr/local/bin/hello_mpi):
 * each rank prints its rank, the world size and the node it runs on, so a
 * test can tell that ranks started, found each other and ran where Slurm
 * placed them. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    printf("hello from rank %d of %d on %s\n", rank, size, host);
    MPI_Finalize();
    return 0;
}
