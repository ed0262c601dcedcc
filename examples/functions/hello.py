# A Kubeless Python function, as Kubeless ran it: `handler(event, context)`, with a dependency from
# requirements.txt. `scripts/demo` deploys it with the `kubeless` CLI.
import humanize


def handler(event, context):
    data = event["data"]
    text = data.decode() if isinstance(data, bytes) else str(data)
    print("hello got %s (%s)" % (text, humanize.naturalsize(len(text))), flush=True)
    return text
