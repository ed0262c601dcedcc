# frozen_string_literal: true

# Kubeless's Ruby runtime, kept to its contract (vmware-archive/runtimes stable/ruby): the module
# `$MOD_NAME.rb` in the code directory is loaded into a module of its own, and every request to `/`
# calls `FUNC_HANDLER(event, context)` with
#   event   = {data:, 'event-id':, 'event-type':, 'event-time':, 'event-namespace':,
#              extensions: {request:}}   (symbol keys; data parsed when the body is JSON)
#   context = {'function-name':, timeout:, runtime:, 'memory-limit':}
# and answers what it returns (a String as is, anything else as JSON).
#
# Where this differs from Kubeless's, on purpose:
# - a call past FUNC_TIMEOUT is answered 408 and the server goes on (Kubeless's did the same, but
#   answered an empty 200 to a function that raised: here that is a 500, logged);
# - a body that says JSON but is not is answered 400 instead of crashing the request;
# - /metrics is served here (Kubeless's came from a proxy in front), with the same names:
#   function_calls_total, function_failures_total, function_duration_seconds{method};
# - the context reads FUNC_RUNTIME and FUNC_MEMORY_LIMIT (Kubeless read RUNTIME and MEMORY_LIMIT,
#   which nothing set), and its timeout is a number;
# - the dependencies `bundle install` put beside the Gemfile are found through its Gemfile.lock, so
#   path and git gems work as well as gems from a registry.
#
# Settings (environment): MOD_NAME, FUNC_HANDLER, FUNC_PORT (8080), FUNC_ADDR (the address listened
# on, 0.0.0.0; the broker's local functions use 127.0.0.1), FUNC_TIMEOUT (180 s), FUNC_RUNTIME,
# FUNC_MEMORY_LIMIT, KUBELESS_DIR (where the code and its installed dependencies are: /kubeless;
# Kubeless's MOD_ROOT_PATH is read too).

require 'json'
require 'logger'
require 'timeout'
require 'sinatra/base'
require 'webrick'
require 'rack/handler/webrick'

$stdout.sync = true
$stderr.sync = true

MOD_NAME = ENV.fetch('MOD_NAME')
FUNC_HANDLER = ENV.fetch('FUNC_HANDLER')
CODE_DIR = ENV['KUBELESS_DIR'] || ENV['MOD_ROOT_PATH'] || '/kubeless'
TIMEOUT = Integer(ENV.fetch('FUNC_TIMEOUT', '180'), exception: false) || 180
PORT = Integer(ENV.fetch('FUNC_PORT', '8080'))
ADDR = ENV['FUNC_ADDR'].to_s.empty? ? '0.0.0.0' : ENV['FUNC_ADDR']
LOG = Logger.new($stderr)

# The function's bundle, as `bundle install --gemfile=<dir>/Gemfile` left it: each gem's load
# paths, added to (not replacing) the runtime's own.
gemfile = File.join(CODE_DIR, 'Gemfile')
if File.file?(gemfile) && File.file?("#{gemfile}.lock")
  ENV['BUNDLE_GEMFILE'] = gemfile
  ENV['BUNDLE_PATH'] ||= CODE_DIR
  require 'bundler'
  Bundler::Definition.build(gemfile, "#{gemfile}.lock", nil).specs.each do |spec|
    $LOAD_PATH.unshift(*spec.full_require_paths) unless spec.name == 'bundler'
  end
end

FUNCTION = Module.new
begin
  path = File.join(CODE_DIR, "#{MOD_NAME}.rb")
  FUNCTION.module_eval(File.read(path), path)
  FUNCTION.module_eval { module_function FUNC_HANDLER.to_sym }
rescue StandardError, ScriptError => e
  LOG.error("No valid function found for the name: #{MOD_NAME}.#{FUNC_HANDLER}, failed to import module: #{e.class}: #{e.message}")
  raise
end

CONTEXT = {
  'function-name': FUNC_HANDLER,
  timeout: TIMEOUT,
  runtime: ENV['FUNC_RUNTIME'],
  'memory-limit': ENV['FUNC_MEMORY_LIMIT'],
}.freeze

# The function's calls, failures and durations by HTTP method, in Prometheus's text format.
class Metrics
  BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10].freeze

  def initialize
    @lock = Mutex.new
    @calls = Hash.new(0)
    @failures = Hash.new(0)
    @sums = Hash.new(0.0)
    @buckets = Hash.new { |h, k| h[k] = Array.new(BUCKETS.size, 0) }
  end

  def observe(method, seconds, failed)
    @lock.synchronize do
      @calls[method] += 1
      @failures[method] += 1 if failed
      @sums[method] += seconds
      BUCKETS.each_with_index { |le, i| @buckets[method][i] += 1 if seconds <= le }
    end
  end

  def text
    @lock.synchronize do
      out = +"# HELP function_duration_seconds The duration of the function's calls.\n"
      out << "# TYPE function_duration_seconds histogram\n"
      @calls.each_key do |m|
        BUCKETS.each_with_index do |le, i|
          out << "function_duration_seconds_bucket{le=\"#{le}\",method=\"#{m}\"} #{@buckets[m][i]}\n"
        end
        out << "function_duration_seconds_bucket{le=\"+Inf\",method=\"#{m}\"} #{@calls[m]}\n"
        out << "function_duration_seconds_sum{method=\"#{m}\"} #{@sums[m]}\n"
        out << "function_duration_seconds_count{method=\"#{m}\"} #{@calls[m]}\n"
      end
      out << "# HELP function_calls_total The function's calls.\n# TYPE function_calls_total counter\n"
      @calls.each { |m, n| out << "function_calls_total{method=\"#{m}\"} #{n}\n" }
      out << "# HELP function_failures_total The function's failed calls.\n# TYPE function_failures_total counter\n"
      @failures.each { |m, n| out << "function_failures_total{method=\"#{m}\"} #{n}\n" }
      out
    end
  end
end

METRICS = Metrics.new

# The function server.
class Kubeless < Sinatra::Base
  set :show_exceptions, false
  set :raise_errors, false
  set :logging, false
  set :host_authorization, { permitted_hosts: [] } if settings.respond_to?(:host_authorization)

  get('/healthz') { 'OK' }

  get('/metrics') do
    content_type 'text/plain; version=0.0.4'
    METRICS.text
  end

  %w[get post put patch delete].each do |verb|
    send(verb, %r{/.*}) { serve }
  end

  helpers do
    def event_data
      body = request.body.read
      return body unless request.media_type == 'application/json'
      return '' if body.empty?

      JSON.parse(body)
    end

    def serve
      data = begin
        event_data
      rescue JSON::ParserError => e
        halt 400, "The body is not JSON: #{e.message}\n"
      end
      event = {
        data: data,
        'event-id': request.env['HTTP_EVENT_ID'],
        'event-type': request.env['HTTP_EVENT_TYPE'],
        'event-time': request.env['HTTP_EVENT_TIME'],
        'event-namespace': request.env['HTTP_EVENT_NAMESPACE'],
        extensions: { request: request },
      }
      call_function(event)
    end

    def call_function(event)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      failed = true
      begin
        result = Timeout.timeout(TIMEOUT) { FUNCTION.send(FUNC_HANDLER.to_sym, event, CONTEXT) }
        failed = false
        answer(result)
      rescue Timeout::Error
        LOG.error("#{MOD_NAME}.#{FUNC_HANDLER} did not finish within #{TIMEOUT} s")
        halt 408, "Timeout: the function did not finish within #{TIMEOUT} s\n"
      rescue StandardError, ScriptError => e
        LOG.error("#{MOD_NAME}.#{FUNC_HANDLER} failed: #{e.class}: #{e.message}\n  #{e.backtrace&.first(10)&.join("\n  ")}")
        halt 500, "Internal Server Error\n"
      ensure
        METRICS.observe(request.request_method, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, failed)
      end
    end

    def answer(result)
      case result
      when String then result
      when nil then ''
      else
        content_type :json
        JSON.generate(result)
      end
    end
  end
end

LOG.info("Serving #{MOD_NAME}.#{FUNC_HANDLER} on port #{PORT} (timeout #{TIMEOUT}s).")
access_log = [[$stdout, WEBrick::AccessLog::COMBINED_LOG_FORMAT]]
server = WEBrick::HTTPServer.new(
  BindAddress: ADDR, Port: PORT, AccessLog: access_log, Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN),
  MaxClients: 256,
)
server.mount('/', Rack::Handler::WEBrick, Kubeless)
%w[TERM INT].each { |signal| trap(signal) { server.shutdown } }
server.start
