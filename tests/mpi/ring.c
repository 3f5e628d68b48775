/* A token passed round a ring of MPI ranks (tests/test_mpi.py).
 *
 * Rank 0 sends 0 to rank 1; each rank adds its own number and passes the token on; rank 0
 * receives the sum 0+1+...+(size-1) back.  Each rank prints one line with what it received,
 * and rank 0 prints "ring done" with the sum, so the test sees every rank take part. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, size, token, len;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    if (size < 2) {
        fprintf(stderr, "ring needs at least 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (rank == 0) {
        token = 0;
        MPI_Send(&token, 1, MPI_INT, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += rank;
        MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
    }
    printf("rank %d of %d on %s (uid %d) received %d\n", rank, size, host, (int)getuid(), token);
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        printf("ring done: %d\n", token);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
