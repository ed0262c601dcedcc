# Reads a page's title with its dependency. Kubeless's example fetched google.com; this one reads a
# copy it carries, so that it runs without leaving the machine.
import re

import six

PAGE = b"<html><head><title>Google</title></head><body>an offline copy</body></html>"


def foo(event, context):
    return re.search(r"<title>(.*?)</title>", six.ensure_str(PAGE)).group(1)
