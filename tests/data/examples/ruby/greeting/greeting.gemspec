Gem::Specification.new do |s|
  s.name = 'greeting'
  s.version = '1.0.0'
  s.summary = 'A gem of the tests own: the gem registry cannot be reached from the tests'
  s.authors = ['kubeless-broker tests']
  s.files = ['lib/greeting.rb']
end
