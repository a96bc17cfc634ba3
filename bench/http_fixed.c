/* bench/http_fixed: the sp_http server answering GET /fixed.json with a
 * fixed small JSON body, for bench/http-core.sh to compare with nginx
 * serving the same bytes from a file.
 *
 *   http_fixed ADDRESS PORT     serve until SIGTERM/SIGINT
 *   http_fixed --body           print the body (the script gives it to nginx)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_err.h"
#include "sp_http.h"
#include "sp_log.h"

static const char body[] =
    "{\"page\":{\"id\":\"kctbh9vrtdwd\",\"name\":\"Example\",\"url\":"
    "\"https://status.example.com\",\"updated_at\":\"2026-11-23T05:44:33Z\"},"
    "\"status\":{\"indicator\":\"none\",\"description\":"
    "\"All Systems Operational\"}}\n";

static void h_fixed(sp_http_req *req, void *app) {
  (void)app;
  sp_http_respond_json(req, 200, body, sizeof body - 1);
}

static const sp_http_route routes[] = {
    {"GET", "/fixed.json", h_fixed},
};

static void on_done(sp_http_server *srv, void *arg) {
  (void)arg;
  sp_http_server_free(srv);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--body") == 0) {
    fwrite(body, 1, sizeof body - 1, stdout);
    return 0;
  }
  if (argc != 3) {
    fprintf(stderr, "usage: %s ADDRESS PORT | --body\n", argv[0]);
    return 2;
  }
  sp_log_init("http_fixed", "bench", NULL);
  uv_loop_t *loop = uv_default_loop();
  sp_http_server *srv;
  int rc = sp_http_server_new(loop, NULL, routes, 1, NULL, &srv);
  if (rc == 0)
    rc = sp_http_server_listen(srv, argv[1], atoi(argv[2]));
  if (rc) {
    fprintf(stderr, "http_fixed: %s\n", sp_strerror(rc));
    return 1;
  }
  sp_http_server_handle_signals(srv, on_done, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) ? 1 : 0;
}
