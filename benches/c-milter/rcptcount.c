/* SPDX-License-Identifier: GPL-3.0-or-later
 *
 * rcptcount: the smallest useful libmilter milter, used by scripts/bench-pipeline as
 * the floor of what any milter costs Postfix. It counts the envelope recipients of
 * each message and accepts every message; it adds no header and logs nothing per
 * message. On exit (SIGTERM/SIGINT, which libmilter turns into a clean stop) it prints
 * one line of totals to stderr, so the benchmark can check that Postfix opened one
 * milter connection per SMTP session rather than one per message.
 *
 *   gcc -O2 -Wall -o rcptcount rcptcount.c -lmilter -lpthread
 *   rcptcount -p unix:/run/rcptcount.sock      # or inet:PORT@127.0.0.1
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

/* Totals over the life of the process. */
static unsigned long total_connections;
static unsigned long total_messages;
static unsigned long total_rcpts;

/* Per connection: recipients of the message in progress. */
struct conn {
    unsigned long rcpts;
};

static struct conn *conn_of(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL)
            return NULL;
        if (smfi_setpriv(ctx, c) != MI_SUCCESS) {
            free(c);
            return NULL;
        }
        __atomic_add_fetch(&total_connections, 1, __ATOMIC_RELAXED);
    }
    return c;
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    (void)argv;
    struct conn *c = conn_of(ctx);
    if (c == NULL)
        return SMFIS_TEMPFAIL;
    c->rcpts = 0;
    return SMFIS_CONTINUE;
}

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
    (void)argv;
    struct conn *c = conn_of(ctx);
    if (c == NULL)
        return SMFIS_TEMPFAIL;
    c->rcpts++;
    return SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
    struct conn *c = conn_of(ctx);
    if (c == NULL)
        return SMFIS_TEMPFAIL;
    __atomic_add_fetch(&total_messages, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&total_rcpts, c->rcpts, __ATOMIC_RELAXED);
    c->rcpts = 0;
    return SMFIS_ACCEPT;
}

static sfsistat on_abort(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    if (c != NULL)
        c->rcpts = 0;
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx)
{
    free(smfi_getpriv(ctx));
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static struct smfiDesc filter = {
    .xxfi_name = "rcptcount",
    .xxfi_version = SMFI_VERSION,
    .xxfi_flags = 0, /* never modifies a message */
    .xxfi_envfrom = on_envfrom,
    .xxfi_envrcpt = on_envrcpt,
    .xxfi_eom = on_eom,
    .xxfi_abort = on_abort,
    .xxfi_close = on_close,
    /* Callbacks left NULL (connect, helo, header, eoh, body, ...): libmilter asks the
     * MTA not to send those steps at all. */
};

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s -p unix:/PATH|inet:PORT@HOST [-b BACKLOG] [-D]\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *conn = NULL;
    int backlog = 256;
    int opt;
    while ((opt = getopt(argc, argv, "p:b:D")) != -1) {
        switch (opt) {
        case 'D':
            /* Take part in the DATA step (reply to SMFIC_DATA) instead of letting
             * libmilter negotiate SMFIP_NODATA. */
            filter.xxfi_data = on_data;
            break;
        case 'p':
            conn = optarg;
            break;
        case 'b':
            backlog = atoi(optarg);
            break;
        default:
            usage(argv[0]);
        }
    }
    if (conn == NULL)
        usage(argv[0]);

    /* A unix socket must be writable by Postfix's smtpd (user postfix). */
    umask(0);
    if (strncmp(conn, "unix:", 5) == 0 || strncmp(conn, "local:", 6) == 0)
        unlink(strchr(conn, ':') + 1);

    if (smfi_setconn((char *)conn) != MI_SUCCESS || smfi_setbacklog(backlog) != MI_SUCCESS) {
        fprintf(stderr, "rcptcount: bad socket %s\n", conn);
        return 1;
    }
    if (smfi_register(filter) != MI_SUCCESS) {
        fprintf(stderr, "rcptcount: smfi_register failed\n");
        return 1;
    }
    if (smfi_opensocket(1) != MI_SUCCESS) {
        fprintf(stderr, "rcptcount: cannot listen on %s: %s\n", conn, strerror(errno));
        return 1;
    }
    fprintf(stderr, "rcptcount: listening on %s\n", conn);
    int rc = smfi_main();
    fprintf(stderr, "rcptcount: totals connections=%lu messages=%lu rcpts=%lu\n",
            __atomic_load_n(&total_connections, __ATOMIC_RELAXED),
            __atomic_load_n(&total_messages, __ATOMIC_RELAXED),
            __atomic_load_n(&total_rcpts, __ATOMIC_RELAXED));
    return rc == MI_SUCCESS ? 0 : 1;
}
