/*
 * mnemod - the mnemo server: WebSocket JSON-RPC / MCP and HTTP on one port.
 *
 * Configuration, lowest precedence first: built-in defaults, the JSON file
 * given with --config, MNEMO_* environment variables, command-line flags.
 * Logs are JSON lines on stderr.
 *
 * DESIGN: the SIGINT / SIGTERM handler only writes the signal number to a
 * pipe (async-signal-safe, and correct whichever thread takes the signal:
 * libraries such as OpenBLAS start threads before main, so masking signals
 * cannot cover them all). A small thread reads the pipe and asks the
 * server to stop; a second signal skips what is left of the drain. The
 * main thread runs the server's loop.
 */
#define _GNU_SOURCE
#include "mnemo.h"
#include "mnemo/server.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <lws_config.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2

/* ------------------------------------------------------------------------
 * JSON-lines logging on stderr.
 * ---------------------------------------------------------------------- */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t json_escape(char *dst, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      dst[n++] = '\\';
      dst[n++] = (char)ch;
    } else if (ch == '\n') {
      dst[n++] = '\\';
      dst[n++] = 'n';
    } else if (ch == '\t') {
      dst[n++] = '\\';
      dst[n++] = 't';
    } else if (ch < 0x20) {
      n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", ch);
    } else {
      dst[n++] = (char)ch;
    }
  }
  dst[n] = 0;
  return n;
}

static void log_json(mn_log_level level, const char *module, const char *msg,
                     void *user) {
  (void)user;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[40];
  size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(when + w, sizeof when - w, ".%03ldZ", ts.tv_nsec / 1000000);
  char emsg[4096], emod[64];
  json_escape(emsg, sizeof emsg, msg);
  json_escape(emod, sizeof emod, module ? module : "");
  pthread_mutex_lock(&log_lock);
  fprintf(stderr,
          "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":\"%s\",\"msg\":\"%s\"}\n",
          when, mn_log_level_name(level), emod, emsg);
  fflush(stderr);
  pthread_mutex_unlock(&log_lock);
}

/* Messages from main itself go through the same format. */
static void say(mn_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(mn_log_level level, const char *fmt, ...) {
  if (level < mn_log_get_level())
    return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  log_json(level, "mnemod", buf, NULL);
}

/* ------------------------------------------------------------------------
 * Command line.
 * ---------------------------------------------------------------------- */
static void usage(FILE *f) {
  fprintf(f,
          "usage: mnemod [options]\n"
          "\n"
          "mnemo server: JSON-RPC 2.0 and MCP over WebSocket (subprotocol\n"
          "'mcp' or none), with /health, /ready and /metrics over HTTP on\n"
          "the same port.\n"
          "\n"
          "options:\n"
          "  --config FILE       JSON configuration file\n"
          "  --host HOST         address to listen on (server.host, default "
          "127.0.0.1)\n"
          "  --port N            port, 0 = any free one (server.port, "
          "default 3001)\n"
          "  --data-dir DIR      data directory, created if missing\n"
          "                      (storage.data_dir, default ./data)\n"
          "  --device D          auto | cpu | cuda (gpu.device)\n"
          "  --log-level L       debug | info | warn | error "
          "(server.log_level)\n"
          "  --workers N         worker threads, 0 = one per core, on a "
          "GPU 4 per\n"
          "                      core (32 to 64) (processing.workers)\n"
          "  --help              this text\n"
          "  --help-config       every configuration key: type, default, "
          "allowed\n"
          "                      values, environment variable (also in "
          "docs/config.md)\n"
          "  --version           version and exit\n"
          "\n"
          "Precedence: defaults < --config file < MNEMO_* environment "
          "(e.g.\n"
          "MNEMO_SERVER_PORT=3002) < flags. Logs are JSON lines on "
          "stderr.\n"
          "SIGINT / SIGTERM: finish the requests in flight, close, exit 0.\n");
}

typedef struct flag_set {
  const char *key;
  const char *value;
} flag_set;

static int make_dirs(const char *path) {
  char buf[1024];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf)
    return -1;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char save = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
      buf[i] = save;
    }
  }
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Signals.
 * ---------------------------------------------------------------------- */
static pthread_mutex_t srv_lock = PTHREAD_MUTEX_INITIALIZER;
static mn_server *running_server;

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  ssize_t n = write(sig_pipe[1], &b, 1);
  (void)n;
  errno = saved;
}

static void *signal_main(void *arg) {
  (void)arg;
  int count = 0;
  for (;;) {
    unsigned char b;
    ssize_t n = read(sig_pipe[0], &b, 1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return NULL;
    int sig = b;
    count++;
    say(MN_LOG_INFO, "received %s%s", sig == SIGTERM ? "SIGTERM" : "SIGINT",
        count == 1 ? "; draining (send again to stop at once)"
                   : "; skipping the rest of the drain");
    pthread_mutex_lock(&srv_lock);
    if (running_server)
      mn_server_stop(running_server);
    pthread_mutex_unlock(&srv_lock);
    if (count >= 3)
      _exit(1);
  }
  return NULL;
}

static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/*
 * OpenMP's idle threads spin for milliseconds after every parallel region
 * by default; on a small machine that steals the core the I/O thread and
 * the other workers need between requests. The wait policy is read when
 * libgomp loads, before main, so when the user has not chosen one we set
 * it and start again once.
 */
static void ensure_passive_omp(char **argv) {
  if (getenv("OMP_WAIT_POLICY") || getenv("MNEMO_NO_REEXEC"))
    return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv("MNEMO_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  /* exec failed: carry on with the default policy */
}

int main(int argc, char **argv) {
  ensure_passive_omp(argv);
  mn_log_set(log_json, NULL);

  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"host", required_argument, NULL, 'H'},
      {"port", required_argument, NULL, 'p'},
      {"data-dir", required_argument, NULL, 'd'},
      {"device", required_argument, NULL, 'D'},
      {"log-level", required_argument, NULL, 'l'},
      {"workers", required_argument, NULL, 'w'},
      {"help", no_argument, NULL, 'h'},
      {"help-config", no_argument, NULL, 'K'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  const char *config_path = NULL;
  flag_set flags[16];
  int nflags = 0;
  int opt;
  opterr = 0;
  while ((opt = getopt_long(argc, argv, "c:H:p:d:D:l:w:hV", longopts, NULL)) !=
         -1) {
    const char *key = NULL;
    switch (opt) {
    case 'c':
      config_path = optarg;
      break;
    case 'H':
      key = "server.host";
      break;
    case 'p':
      key = "server.port";
      break;
    case 'd':
      key = "storage.data_dir";
      break;
    case 'D':
      key = "gpu.device";
      break;
    case 'l':
      key = "server.log_level";
      break;
    case 'w':
      key = "processing.workers";
      break;
    case 'h':
      usage(stdout);
      return 0;
    case 'K': {
      char *ref = mn_config_keys_text();
      if (!ref) {
        fprintf(stderr, "mnemod: %s\n", mn_errmsg());
        return 1;
      }
      fputs(ref, stdout);
      free(ref);
      return 0;
    }
    case 'V':
      printf("mnemod %s (libwebsockets %s)\n", MNEMO_VERSION,
             LWS_LIBRARY_VERSION);
      return 0;
    default:
      if (optopt)
        fprintf(stderr, "mnemod: option -%c needs a value or is unknown\n",
                optopt);
      else
        fprintf(stderr, "mnemod: unknown option '%s'\n", argv[optind - 1]);
      fprintf(stderr, "try 'mnemod --help'\n");
      return EXIT_USAGE;
    }
    if (key && nflags < (int)(sizeof flags / sizeof flags[0]))
      flags[nflags++] = (flag_set){key, optarg};
  }
  if (optind < argc) {
    fprintf(stderr, "mnemod: unexpected argument '%s'; try 'mnemod --help'\n",
            argv[optind]);
    return EXIT_USAGE;
  }

  mn_config cfg;
  mn_config_defaults(&cfg);
  if (config_path && mn_config_load_file(&cfg, config_path) != MN_OK) {
    /* every message of mn_config_load_file names the file already */
    fprintf(stderr, "mnemod: %s\n", mn_errmsg());
    return EXIT_USAGE;
  }
  if (mn_config_apply_env(&cfg) != MN_OK) {
    fprintf(stderr, "mnemod: environment: %s\n", mn_errmsg());
    return EXIT_USAGE;
  }
  for (int i = 0; i < nflags; i++) {
    if (mn_config_set(&cfg, flags[i].key, flags[i].value) != MN_OK) {
      fprintf(stderr, "mnemod: flag for %s: %s\n", flags[i].key, mn_errmsg());
      return EXIT_USAGE;
    }
  }
  if (mn_config_validate(&cfg) != MN_OK) {
    fprintf(stderr, "mnemod: configuration: %s\n", mn_errmsg());
    return EXIT_USAGE;
  }
  mn_log_level level;
  if (mn_log_level_parse(cfg.log_level, &level) != MN_OK) {
    fprintf(stderr, "mnemod: server.log_level: %s\n", mn_errmsg());
    return EXIT_USAGE;
  }
  mn_log_set_level(level);

  signal(SIGPIPE, SIG_IGN);
  /* Messages and replies are buffers of 100 KB to 100 MB allocated on one
   * thread and freed on another. glibc's defaults hand such blocks back to
   * the kernel on free and fault them in again on the next request; keep
   * them instead (the per-connection limits bound how much is held). */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024);
  if (pipe2(sig_pipe, O_CLOEXEC) != 0) {
    say(MN_LOG_ERROR, "cannot create the signal pipe: %s", strerror(errno));
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  raise_fd_limit();

  if (make_dirs(cfg.data_dir) != 0) {
    say(MN_LOG_ERROR,
        "cannot create the data directory '%s' "
        "(storage.data_dir): %s",
        cfg.data_dir, strerror(errno));
    return 1;
  }

  mn_backend_opts bo;
  mn_backend_opts_init(&bo);
  if (mn_backend_pref_parse(cfg.gpu_device, &bo.pref) != MN_OK) {
    fprintf(stderr, "mnemod: gpu.device: %s\n", mn_errmsg());
    return EXIT_USAGE;
  }
  if (!cfg.gpu_enabled && bo.pref == MN_BACKEND_AUTO)
    bo.pref = MN_BACKEND_CPU;
  bo.plugin_dir = cfg.plugin_dir[0] ? cfg.plugin_dir : NULL;
  bo.device_mem_limit = cfg.gpu_memory_limit;
  bo.precision_f16 = strcmp(cfg.gpu_precision, "float32") != 0;
  mn_backend *backend = NULL;
  if (mn_backend_open(&bo, &backend) != MN_OK) {
    say(MN_LOG_ERROR, "cannot open the %s backend: %s", cfg.gpu_device,
        mn_errmsg());
    return 1;
  }
  say(MN_LOG_INFO, "mnemod %s: backend %s (%s), data in %s", MNEMO_VERSION,
      mn_backend_name(backend), mn_backend_device(backend), cfg.data_dir);
  /* A worker runs one request at a time, start to end. On the CPU the
   * request computes on the worker's core, so one per core. On a GPU a
   * worker mostly waits for the device, and dynamic batching can only
   * merge requests that workers hold at the same moment: more workers
   * keep the device fed and let batches form. 64 is the CUDA plugin's
   * lane count (cuda.md); past it, callers queue for a lane anyway. */
  if (cfg.workers == 0 && mn_backend_device_kind(backend) == MN_DEVICE_GPU) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t w = 4 * (int64_t)(ncpu > 0 ? ncpu : 1);
    cfg.workers = w < 32 ? 32 : w > 64 ? 64 : w;
    say(MN_LOG_INFO,
        "GPU backend: %lld workers (processing.workers 0 means 4 per core, "
        "32 to 64, on a GPU; set it to choose)",
        (long long)cfg.workers);
  }

  mn_metrics *metrics = NULL;
  if (mn_metrics_create(&metrics) != MN_OK) {
    say(MN_LOG_ERROR, "cannot create the metrics registry: %s", mn_errmsg());
    mn_backend_close(backend);
    return 1;
  }
  mn_rpc *rpc = NULL;
  mn_rpc_opts ro = {.config = &cfg, .backend = backend, .metrics = metrics};
  if (mn_rpc_create(&ro, &rpc) != MN_OK) {
    say(MN_LOG_ERROR, "cannot start the JSON-RPC engine: %s", mn_errmsg());
    mn_metrics_destroy(metrics);
    mn_backend_close(backend);
    return 1;
  }
  mn_server *srv = NULL;
  mn_server_opts so = {.config = &cfg,
                       .rpc = rpc,
                       .metrics = metrics,
                       .drain_ms = cfg.drain_timeout_ms};
  if (mn_server_create(&so, &srv) != MN_OK) {
    say(MN_LOG_ERROR, "%s", mn_errmsg());
    mn_rpc_destroy(rpc);
    mn_metrics_destroy(metrics);
    mn_backend_close(backend);
    return 1;
  }
  pthread_mutex_lock(&srv_lock);
  running_server = srv;
  pthread_mutex_unlock(&srv_lock);
  pthread_t sig_thread;
  if (pthread_create(&sig_thread, NULL, signal_main, NULL) == 0)
    pthread_detach(sig_thread);
  else
    say(MN_LOG_WARN, "cannot start the signal thread; SIGTERM will kill "
                     "mnemod without a drain");

  mn_status st = mn_server_run(srv);
  pthread_mutex_lock(&srv_lock);
  running_server = NULL;
  pthread_mutex_unlock(&srv_lock);
  if (st != MN_OK) {
    /* Requests that never returned still run inside the engine: freeing
     * it under them would crash, so leave the memory to the exit. */
    say(MN_LOG_WARN, "%s; exiting without waiting for them", mn_errmsg());
    return 0;
  }
  mn_server_destroy(srv);
  mn_rpc_destroy(rpc);
  mn_metrics_destroy(metrics);
  mn_backend_close(backend);
  say(MN_LOG_INFO, "bye");
  return 0;
}
