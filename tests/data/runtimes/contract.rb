# The runtime contract suite's function (tests/it/runtimes.rs), written as for Kubeless's Ruby runtime.
require 'securerandom'

def handler(event, context)
  data = event[:data]
  return { text: data } unless data.is_a?(Hash)

  case data['op']
  when 'raise'
    raise ArgumentError, 'the function failed on purpose'
  when 'sleep'
    sleep(data['seconds'])
    'slept'
  when 'spin'
    loop {} # only the runtime's timeout can stop this
  when 'barrier'
    # Waits until `n` calls are inside the function at once (files in a shared directory).
    File.write(File.join(data['dir'], SecureRandom.uuid), '')
    deadline = Time.now + data['wait']
    while Time.now < deadline
      return 'met' if Dir.children(data['dir']).size >= data['n']

      sleep(0.05)
    end
    'alone'
  else
    request = event[:extensions][:request]
    {
      'data' => data,
      'event-id' => event[:'event-id'],
      'event-type' => event[:'event-type'],
      'event-time' => event[:'event-time'],
      'event-namespace' => event[:'event-namespace'],
      'context' => context,
      'method' => request.request_method,
      'path' => request.path_info,
      'query' => request.GET,
    }
  end
end
