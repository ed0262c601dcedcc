require 'greeting'

def foo(event, context)
  Greeting.hello
end
