def foo(event, context)
  "hello world"
end
